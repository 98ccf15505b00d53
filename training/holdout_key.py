"""The secret that keys the retrain's feedback split: which labelled images are held out to judge
a candidate, and in which order the per-class cap samples them.

A plain hash of the pixels let a labeller nudge each image onto the training side (the tenth
audit's 20,000 images, none held out); keyed with a secret no client sees, the side is as good
as a coin toss to them, and the same key keeps every image on its side retrain after retrain.
The key lives in a file, by default ``<repository>/.feedback-holdout.key`` (hidden: the service
takes no dot file for a model), made once with ``secrets`` and never shown.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from service.core.errors import DataError, file_problem

KEY_FILE = ".feedback-holdout.key"
KEY_BYTES = 32


def holdout_key(path: Path) -> bytes:
    """The key in ``path``, made there first (owner-only) if there is none. Made under a
    temporary name and linked into place, so two ranks of a distributed run that start at once
    read the same key, never a half-written one. A key that cannot be made or read is a
    ``DataError`` saying what to do: on a read-only repository it was a raw ``OSError``'s
    traceback."""
    try:
        if not path.exists():
            _make(path)
        key = bytes.fromhex(path.read_text().strip())
    except OSError as exc:
        raise DataError(
            f"{path}: cannot make or read the feedback hold-out key ({file_problem(exc)}); make "
            "its folder writable for the first retrain, or give --feedback-key a readable file "
            f"of {KEY_BYTES} random bytes in hex (python -c 'import secrets; "
            f"print(secrets.token_hex({KEY_BYTES}))' > KEY; chmod 600 KEY), kept for every "
            "retrain after"
        ) from None
    except ValueError as exc:
        raise DataError(f"{path}: cannot read the feedback hold-out key ({exc})") from None
    if len(key) < 16:
        raise DataError(f"{path}: the feedback hold-out key is under 16 bytes")
    return key


def _make(path: Path) -> None:
    """A new key at ``path``, unless another process makes one first (theirs stands)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_hex(KEY_BYTES) + "\n")
        os.link(temporary, path)  # fails if another process made it meanwhile: theirs stands
    except FileExistsError:
        pass
    finally:
        temporary.unlink(missing_ok=True)
