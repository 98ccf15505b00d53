"""A throwaway PostgreSQL server for the prediction log's tests: Debian's ``initdb``/``pg_ctl``
(``make postgres`` installs them) in a temporary folder, on a free loopback port, trust auth,
stopped and removed at the end. PostgreSQL refuses to run as root, which CI is: there the server
runs as the ``postgres`` user the package makes (``runuser``). Without the binaries the tests
that ask for it are skipped with a message."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import count
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.support.servers import free_port

_databases = count()


def pg_bin() -> Path | None:
    """The newest installed PostgreSQL's bin folder (Debian keeps it off PATH), else PATH's."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=_version)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


def _version(path: str) -> tuple[int, ...]:
    digits = Path(path).parents[1].name
    return tuple(int(part) for part in digits.split(".") if part.isdigit())


@dataclass
class Postgres:
    """A running server: its port, start/stop (``pg_ctl``), and fresh databases on it."""

    bin: Path
    folder: Path  # owned by the user the server runs as
    port: int
    user: str | None  # run as this user (root only); None: as ourselves

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def _run(self, *argv: str) -> None:
        command = [str(self.bin / argv[0]), *argv[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, cwd=self.folder, timeout=60)
        assert done.returncode == 0, f"{' '.join(argv)}: {done.stdout}{done.stderr}{self.log}"

    @property
    def log(self) -> str:
        path = self.folder / "server.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--no-sync", "--no-instructions")  # fmt: skip

    def start(self) -> None:
        """Start (waiting until it accepts connections), on the same port as before."""
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder}"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "server.log"),
                  "-o", options, "-w", "-t", "60", "start")  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m fast``: sessions are cut, committed work is kept (a checkpoint)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database's SQLAlchemy URL (one per test: no test sees another's rows)."""
        name = f"log_{os.getpid()}_{next(_databases)}"
        engine = sa.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        finally:
            engine.dispose()
        return self.url(name)


def _server_user() -> str | None:
    """Whom the server runs as: ourselves, or (as root) the package's ``postgres`` user."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres").pw_name
    except KeyError:
        pytest.skip("running as root and there is no postgres user to run PostgreSQL as")


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One server for the session (each test takes its own database: ``new_database``)."""
    bin = pg_bin()
    if bin is None or not (bin / "initdb").exists():
        pytest.skip("PostgreSQL's initdb/pg_ctl are not installed (make postgres)")
    user = _server_user()
    folder = Path(tempfile.mkdtemp(prefix="prediction-log-pg-"))
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    server = Postgres(bin, folder, free_port(), user)
    try:
        server.init()
        server.start()
        yield server
    finally:
        if (server.data / "postmaster.pid").exists():
            server.stop("immediate")
        shutil.rmtree(folder, ignore_errors=True)
