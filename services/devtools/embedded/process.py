"""Process plumbing shared by the embedded launchers: ports, locks, polling, stopping."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import functools
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Self

import psutil

from services.devtools.embedded.errors import DataDirInUseError, ServerStartError

LOOPBACK = "127.0.0.1"


# The kernel's ephemeral ports (Linux's default when /proc does not say): outgoing connections
# take them at random, so a server restarted on one of them may find it taken.
_EPHEMERAL_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_EPHEMERAL = (32768, 60999)
# Ports below the ephemeral range free_port picks from.
_FIXED_PORTS = 10_000
_handed_out: set[int] = set()


def ephemeral_ports() -> tuple[int, int]:
    """Return the first and last port the kernel gives outgoing connections."""
    with contextlib.suppress(OSError, ValueError):
        low, high = (int(x) for x in _EPHEMERAL_FILE.read_text().split())
        return low, high
    return _EPHEMERAL


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port that is free on host right now, below the kernel's ephemeral range
    when one there is free: a server stopped and started again on it (a restart, a crash
    test) finds it free still, where a port of that range may meanwhile be any outgoing
    connection's. Ports this process handed out are not handed out again."""
    low, _ = ephemeral_ports()
    first = max(1024, low - _FIXED_PORTS)
    for _ in range(50):
        port = random.randrange(first, low) if low > first else 0
        if port and port not in _handed_out and port_is_free(port, host):
            _handed_out.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def secret_file(path: Path, *, prefix: str = "", nbytes: int = 24) -> str:
    """Return the secret kept at `path`, made (`prefix` and `nbytes` random bytes, URL-safe,
    mode 600) on first use."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    value = prefix + secrets.token_urlsafe(nbytes)  # URL-safe: it goes into URLs as it is
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another launcher made it first
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(value)
    return value


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """Tell whether port can be bound on host right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Servers bind with SO_REUSEADDR: a port in TIME_WAIT is free for them too.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def choose_port(requested: int, remembered: Path) -> int:
    """Pick the requested port, else the one used last time if free, else a free one."""
    if requested:
        return requested
    # Reusing the last port keeps URLs stable across restarts of `eventfn up`.
    with contextlib.suppress(OSError, ValueError):
        last = int(remembered.read_text().strip())
        if 0 < last < 65536 and port_is_free(last):
            return last
    return free_port()


def wait_until(
    ready: Callable[[], bool],
    *,
    name: str,
    process: subprocess.Popen[bytes],
    log_path: Path,
    timeout: float,
    interval: float = 0.01,
) -> None:
    """Poll ready() until it holds; raise ServerStartError if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if ready():
            return
        code = process.poll()
        if code is not None:
            raise ServerStartError(name, f"process exited with code {code}", log_path)
        if time.monotonic() > deadline:
            raise ServerStartError(name, f"not healthy after {timeout:.0f} s", log_path)
        # Back off gently: fast first answers, little CPU while a slow disk catches up.
        time.sleep(interval)
        interval = min(interval * 1.5, 0.2)


class DataDirLock:
    """Exclusive, crash-safe ownership of a data dir (flock, released when the process dies)."""

    def __init__(self, name: str, data_dir: Path) -> None:
        self._name = name
        self._data_dir = data_dir
        self._path = data_dir / ".launcher.lock"
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock or raise DataDirInUseError naming the owner."""
        file = self._path.open("a+")
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            owner = file.read().strip()
            file.close()
            raise DataDirInUseError(
                self._name, self._data_dir, int(owner) if owner.isdigit() else None
            ) from None
        file.seek(0)
        file.truncate()
        file.write(str(os.getpid()))
        file.flush()
        self._file = file

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass(frozen=True)
class RunAs:
    """The unprivileged account a server runs as when we are root."""

    uid: int
    gid: int


_PR_SET_PDEATHSIG = 1


@functools.cache
def _setpriv() -> str | None:
    """Return util-linux's setpriv if it sets a parent-death signal (2.33 and later)."""
    path = shutil.which("setpriv")
    if path is None:
        return None
    try:
        usage = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return path if "--pdeathsig" in usage.stdout else None


def _parent_death_signal(sig: signal.Signals) -> Callable[[], None]:
    """Return a pre-exec hook asking Linux to send sig to the child when its parent dies
    (where setpriv is missing)."""
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before fork: the hook only calls it
    prctl = libc.prctl

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)

    return hook


@dataclass(frozen=True)
class Launch:
    """How to start a server: its command and what `subprocess` does before the exec."""

    command: list[str]
    user: int | None = None
    group: int | None = None
    extra_groups: list[int] | None = None
    preexec_fn: Callable[[], None] | None = None


def launch(
    argv: Sequence[str], run_as: RunAs | None, stop_with_parent: signal.Signals | None = None
) -> Launch:
    """Return how to run argv as run_as, given stop_with_parent when this process dies.

    Where setpriv is found, it switches the account and sets the signal, then execs the
    server: Python starts the child with vfork, in which nothing runs before the exec. A
    child made by fork (a pre-exec hook, or Python's own switch of account) runs gRPC's
    fork handlers first, which restart its threads there: a server "exited" with SIGSEGV
    before it started (in two full test runs of a dozen).
    """
    setpriv = _setpriv() if run_as or stop_with_parent else None
    if setpriv:
        prefix = [setpriv]
        if run_as:
            prefix += [f"--reuid={run_as.uid}", f"--regid={run_as.gid}", "--clear-groups"]
        if stop_with_parent:  # set after the switch of account, which would clear it
            prefix.append(f"--pdeathsig={stop_with_parent.name.removeprefix('SIG')}")
        return Launch([*prefix, "--", *argv])
    return Launch(
        list(argv),
        user=run_as.uid if run_as else None,
        group=run_as.gid if run_as else None,
        extra_groups=[] if run_as else None,
        preexec_fn=_parent_death_signal(stop_with_parent) if stop_with_parent else None,
    )


def spawn(
    argv: Sequence[str],
    *,
    log_path: Path,
    run_as: RunAs | None = None,
    env: dict[str, str] | None = None,
    stop_with_parent: signal.Signals | None = None,
) -> subprocess.Popen[bytes]:
    """Start a server process with stdout and stderr appended to log_path.

    With stop_with_parent (Linux), the server gets that signal when this process dies,
    even by SIGKILL: test sessions leave no servers behind (see `launch`).
    """
    how = launch(argv, run_as, stop_with_parent)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            how.command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            # Own session: a terminal Ctrl-C reaches the launcher only, which then
            # stops the servers after the services that use them.
            start_new_session=True,
            user=how.user,
            group=how.group,
            extra_groups=how.extra_groups,
            preexec_fn=how.preexec_fn,
        )


def stop_process(
    process: subprocess.Popen[bytes], *, sig: signal.Signals, timeout: float
) -> int | None:
    """Send sig, wait up to timeout, then kill; return the exit code."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


def stop_leftover(pid: int, *, sig: signal.Signals, timeout: float) -> None:
    """Stop a process we did not start (a leftover of a dead launcher), then kill it."""
    try:
        proc = psutil.Process(pid)
        proc.send_signal(sig)
    except psutil.NoSuchProcess:
        return
    if _gone(proc, timeout):
        return
    with contextlib.suppress(psutil.NoSuchProcess):
        proc.kill()
    _gone(proc, timeout)


def _gone(proc: psutil.Process, timeout: float) -> bool:
    """Wait until proc has exited; a zombie counts, since only its parent can reap it."""
    deadline = time.monotonic() + timeout
    interval = 0.01
    while True:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
        interval = min(interval * 1.5, 0.2)


def live_process_using(pid: int, executable_name: str, marker: str) -> bool:
    """Tell whether pid is a live executable_name process whose command line mentions marker."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return proc.name() == executable_name and any(marker in a for a in proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


class ServerLifecycle:
    """Mixin giving a launcher with start()/stop() the `with` and `async with` protocols."""

    def start(self) -> None:
        """Start the server and return once it is healthy."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the server cleanly (idempotent)."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        # Starting blocks on process start and polling: keep it off the event loop.
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.to_thread(self.stop)
