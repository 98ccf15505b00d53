"""deploy/nginx/nginx.conf on loopback, for tests and benchmarks without Docker: the listen ports
rewritten to free ones, the compose service `api` to local api processes, temporary files in a
folder of our own; then Debian's nginx runs it in the foreground.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "deploy" / "nginx" / "nginx.conf"


def find_nginx() -> str | None:
    """Debian puts nginx in /usr/sbin, which a non-root PATH may lack."""
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def localise(conf: str, listen: dict[int, int], upstreams: dict[int, list[int]], tmp: Path) -> str:
    """``listen 8000`` -> ``listen 127.0.0.1:<free>``; ``server api:8000 <params>;`` -> one
    ``server 127.0.0.1:<port> <params>;`` per local replica; temporary files under ``tmp``."""

    def server(match: re.Match[str]) -> str:
        port, params = int(match.group(1)), match.group(2)
        return "\n".join(f"server 127.0.0.1:{p}{params}" for p in upstreams[port])

    conf, n = re.subn(r"server api:(\d+)([^;]*;)", server, conf)
    if n != len(upstreams):
        raise ValueError(f"expected {len(upstreams)} upstreams naming `api`, found {n}")
    for port, local in listen.items():
        conf, n = re.subn(rf"listen {port}\b", f"listen 127.0.0.1:{local}", conf)
        if n != 1:
            raise ValueError(f"expected one server listening on {port}, found {n}")
    temp = "".join(
        f"\n    {kind}_temp_path {tmp / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return conf.replace("http {", "http {" + temp, 1)


def nginx_command(
    nginx: str, listen: dict[int, int], upstreams: dict[int, list[int]], tmp: Path
) -> list[str]:
    """Write the local config into ``tmp``, check it (``nginx -t``), return the command to run."""
    tmp.mkdir(parents=True, exist_ok=True)
    conf = tmp / "nginx.conf"
    conf.write_text(localise(CONF.read_text(), listen, upstreams, tmp))
    argv = [nginx, "-p", str(tmp), "-c", str(conf)]
    main = f"daemon off; pid {tmp / 'nginx.pid'}; error_log {tmp / 'error.log'};"
    if os.geteuid() == 0:  # workers would drop to nobody, who cannot enter a private temp folder
        main += " user root;"
    argv += ["-g", main]
    check = subprocess.run([*argv, "-t"], capture_output=True, text=True, timeout=30)
    if check.returncode != 0:
        raise RuntimeError(f"nginx -t refused the config: {check.stderr}")
    return argv
