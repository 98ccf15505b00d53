"""Property-based API fuzzing: schemathesis against the live ``/openapi.json`` of a real server.

    python scripts/fuzz_api.py --max-examples 100 --seed 6          (or: make fuzz)

Starts ``python -m service`` on a free loopback port over ``--model-repository``, runs every
operation with bounded, seeded examples (documented examples, coverage, fuzzing and stateful
phases), and checks that no response is a 5xx and each matches the documented schema, status
codes, content types and headers. The server's log must hold no traceback either. Prints one JSON
line (cases, failures, tracebacks) and exits non-zero on any failure.

Two passes: the real model's name with the admin token, then names drawn at random without it.
Every check runs except ``positive_data_acceptance``: a schema cannot say that an image must
decode or that a shape must match the data, so schema-valid requests may rightly get a 4xx.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script, the project root is not on the path

from bench.server import free_port, wait_ready  # noqa: E402

CHECKS_EXCLUDED = "positive_data_acceptance"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", type=Path, default=Path("models"))
    parser.add_argument("--max-examples", type=int, default=100, help="per operation and phase")
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--model", default="cifar10_cnn", help="a model in the repository")
    parser.add_argument("--version", default="1", help="a version of it")
    parser.add_argument("--workers", type=int, default=1, help="schemathesis' concurrent workers")
    parser.add_argument("--output", type=Path, help="where schemathesis' full report goes")
    args = parser.parse_args(argv)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    token = secrets.token_hex(16)
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("ADMIN_TOKEN_FILE", "ADMIN_LOOPBACK")},
        "POLL_INTERVAL_S": "0",
        "PROVIDERS": "CPUExecutionProvider",
        "ADMIN_TOKEN": token,
    }
    with tempfile.TemporaryDirectory() as scratch:
        server_log = Path(scratch) / "server.log"
        with server_log.open("wb") as log:
            server = subprocess.Popen(
                [
                    *(sys.executable, "-m", "service", "--port", str(port), "--grpc-port", "-1"),
                    *("--model-repository", str(args.model_repository), "--log-level", "warning"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
            try:
                wait_ready(url, server)
                command = [
                    str(Path(sys.executable).parent / "schemathesis"),
                    "run",
                    f"{url}/openapi.json",
                    "--checks=all",
                    f"--exclude-checks={CHECKS_EXCLUDED}",
                    f"--max-examples={args.max_examples}",
                    f"--seed={args.seed}",
                    f"--workers={args.workers}",
                    "--generation-database=none",
                    "--request-timeout=30",
                    "--no-color",
                ]
                quiet: dict[str, Any] = {"capture_output": True, "text": True}
                started = time.monotonic()
                # Pass 1: the real model and version in the paths (drawn at random they mostly
                # meet 404s) and the admin token, so the repository API is fuzzed too; unload
                # is left out so that readiness and infer keep a model to answer with.
                pinned = Path(scratch) / "pinned"
                pinned.mkdir()
                (pinned / "schemathesis.toml").write_text(
                    f'[parameters]\nname = "{args.model}"\nversion = "{args.version}"\n'
                )
                authorized = [
                    f"--header=Authorization: Bearer {token}",
                    "--exclude-path-regex=/unload$",
                ]
                runs = [subprocess.run([*command, *authorized], **quiet, cwd=pinned)]
                # Pass 2: every operation, names drawn at random, no token (the repository API
                # must refuse it: the ignored_auth check).
                runs.append(subprocess.run(command, **quiet, cwd=scratch))
                seconds = time.monotonic() - started
            finally:
                server.terminate()
                server.wait(timeout=30)
        server_text = server_log.read_text(errors="replace")
    reports = [run.stdout + run.stderr for run in runs]
    if args.output is not None:
        args.output.write_text("\n".join(reports) + "\n--- server log ---\n" + server_text)

    def total(pattern: str) -> int:
        return sum(int(m.group(1)) for r in reports if (m := re.search(pattern, r)))

    summary = {
        "operations": max(
            (int(m.group(1)) for r in reports if (m := re.search(r"Tested: (\d+)", r))),
            default=0,
        ),
        "cases": total(r"(\d+) generated"),
        "failures": total(r"found (\d+) unique failures"),
        "server_tracebacks": server_text.count("Traceback"),
        "seed": args.seed,
        "max_examples": args.max_examples,
        "seconds": round(seconds, 1),
        "schemathesis_exit": [run.returncode for run in runs],
    }
    print(json.dumps(summary))
    if any(run.returncode for run in runs) or summary["server_tracebacks"]:
        for report in reports:
            print(report[-6000:], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
