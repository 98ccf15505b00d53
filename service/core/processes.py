"""Whether a process still exists, for the files worker processes leave behind them."""

from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a killed worker counts until its parent reaps it, which
    uvicorn's supervisor does within a second)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's: it exists
        return True
    return True
