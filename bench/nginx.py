"""deploy/nginx/nginx.conf on loopback, for tests and benchmarks without Docker: the listen ports
rewritten to free ones, the compose service `api` to local api processes, temporary files in a
folder of our own; then Debian's nginx runs it in the foreground (``python -m bench replicas``
and tests/deploy/test_nginx.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from bench.results import ROOT

CONF = ROOT / "deploy" / "nginx" / "nginx.conf"


def find_nginx() -> str | None:
    """Debian puts nginx in /usr/sbin, which a non-root PATH may lack."""
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def nginx_version(nginx: str) -> tuple[int, ...]:
    """``nginx -v`` as a tuple, e.g. (1, 22, 1)."""
    result = subprocess.run([nginx, "-v"], capture_output=True, text=True, timeout=30)
    match = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", result.stderr + result.stdout)
    return tuple(int(part) for part in match.groups()) if match else (0, 0, 0)


def localise(
    conf: str,
    listen: dict[int, int],
    upstreams: dict[int, list[int]],
    tmp: Path,
    version: tuple[int, ...] = (1, 28, 0),
) -> str:
    """``listen 8000`` -> ``listen 127.0.0.1:<free>``; the service name ``api:8000`` -> an upstream
    block of the local replicas (``server 127.0.0.1:<port>`` each); the resolver include (written in
    the container by deploy/nginx/start.sh) -> a plain resolver line; temporary files under ``tmp``.
    nginx older than 1.25.1 gets ``listen ... http2`` for ``http2 on``."""
    blocks = []
    for port, replicas in upstreams.items():
        conf, n = re.subn(rf"default api:{port};", f"default local_api_{port};", conf)
        if n != 1:
            raise ValueError(f"expected one map naming `api:{port}`, found {n}")
        servers = "".join(
            f"\n        server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;" for p in replicas
        )
        blocks.append(f"\n    upstream local_api_{port} {{{servers}\n        keepalive 16;\n    }}")
    conf, n = re.subn(r"include /etc/nginx/resolver\.conf;", "resolver 127.0.0.1 valid=2s;", conf)
    if n != 1:
        raise ValueError("expected one `include /etc/nginx/resolver.conf;`")
    for port, local in listen.items():
        conf, n = re.subn(rf"listen {port}\b", f"listen 127.0.0.1:{local}", conf)
        if n != 1:
            raise ValueError(f"expected one server listening on {port}, found {n}")
    if version < (1, 25, 1):
        conf = re.sub(r"(listen [^;]+);(\s*)http2 on;", r"\1 http2;", conf)
    temp = "".join(
        f"\n    {kind}_temp_path {tmp / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return conf.replace("http {", "http {" + temp + "".join(blocks), 1)


def nginx_command(
    nginx: str, listen: dict[int, int], upstreams: dict[int, list[int]], tmp: Path
) -> list[str]:
    """Write the local config into ``tmp``, check it (``nginx -t``), return the command to run."""
    tmp.mkdir(parents=True, exist_ok=True)
    conf = tmp / "nginx.conf"
    conf.write_text(localise(CONF.read_text(), listen, upstreams, tmp, nginx_version(nginx)))
    argv = [nginx, "-p", str(tmp), "-c", str(conf)]
    main = f"daemon off; pid {tmp / 'nginx.pid'}; error_log {tmp / 'error.log'};"
    if os.geteuid() == 0:  # workers would drop to nobody, who cannot enter a private temp folder
        main += " user root;"
    argv += ["-g", main]
    check = subprocess.run([*argv, "-t"], capture_output=True, text=True, timeout=30)
    if check.returncode != 0:
        raise RuntimeError(f"nginx -t refused the config: {check.stderr}")
    return argv
