"""Hosts on one machine: Linux network namespaces joined by veth links to a bridge.

Each host has its own namespace, address and loopback; the test process stays in the root
namespace, which has the bridge's address (10.<a>.<b>.1) and reaches every host. Cutting a
host's network takes its link down (its processes keep running, cut off, as when a switch
port or a cable fails); restoring brings it up again. Everything is named with a per-run
prefix and removed by `close()`, even after a failed test.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path


class NetnsUnavailable(Exception):
    """Network namespaces cannot be made here (not root, no `ip`, no permission)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def unavailable_reason() -> str | None:
    """Return why namespaces with veth links cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add); run as root to test several hosts"
    if shutil.which("ip") is None:
        return "the `ip` command (Debian package iproute2) is not installed"
    probe = f"efprobe{uuid.uuid4().hex[:6]}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


@dataclass
class Host:
    """One host: its namespace, its address, the root end of its link, what runs on it."""

    role: str
    netns: str
    address: str
    link: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def pids(self) -> list[int]:
        """Return the pids of every process in this host's namespace."""
        listed = _ip("netns", "pids", self.netns, check=False).stdout.split()
        return [int(p) for p in listed if p.isdigit()]


class Network:
    """A bridge in the root namespace and hosts attached to it, one namespace each."""

    def __init__(self, logs: Path) -> None:
        self.id = uuid.uuid4().hex[:4]
        self.prefix = f"ef{self.id}"
        # A /24 of 10.0.0.0/8 per run; only these namespaces and the bridge use it.
        self.subnet = f"10.{random.randint(200, 250)}.{random.randint(0, 255)}"
        self.bridge = f"{self.prefix}br"
        self.gateway = f"{self.subnet}.1"
        self.logs = logs
        self.hosts: dict[str, Host] = {}

    @property
    def cidr(self) -> str:
        """Return the hosts' subnet in CIDR form."""
        return f"{self.subnet}.0/24"

    def open(self) -> None:
        """Create the bridge and give the root namespace its address on it."""
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def add(self, role: str) -> Host:
        """Create a host: a namespace with loopback and one veth link to the bridge."""
        index = len(self.hosts) + 10
        netns = f"{self.prefix}-{role}"
        link, peer = f"{self.prefix}h{index}", f"{self.prefix}p{index}"
        _ip("netns", "add", netns)
        _ip("link", "add", link, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", netns)
        address = f"{self.subnet}.{index}"
        inside = ("netns", "exec", netns, "ip")
        _ip(*inside, "link", "set", "lo", "up")
        _ip(*inside, "link", "set", peer, "name", "eth0")
        _ip(*inside, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip(*inside, "link", "set", "eth0", "up")
        _ip("link", "set", link, "master", self.bridge)
        _ip("link", "set", link, "up")
        host = Host(role, netns, address, link)
        self.hosts[role] = host
        return host

    def spawn(
        self, host: Host, argv: list[str], env: dict[str, str], log_name: str
    ) -> subprocess.Popen[bytes]:
        """Start a process on a host (its own session, output to a log file)."""
        with (self.logs / f"{log_name}.log").open("ab") as log:
            process = subprocess.Popen(
                ["ip", "netns", "exec", host.netns, *argv],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        host.processes.append(process)
        return process

    def cut(self, host: Host) -> None:
        """Take the host's link down: it neither sends nor receives anything."""
        _ip("link", "set", host.link, "down")

    def restore(self, host: Host) -> None:
        """Bring the host's link up again."""
        _ip("link", "set", host.link, "up")

    def kill_all(self, host: Host) -> list[int]:
        """SIGKILL every process on the host (a host crash); return the pids killed."""
        pids = host.pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for process in host.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        host.processes.clear()
        return pids

    def stop(self, host: Host, timeout: float = 30) -> None:
        """Stop the host's processes (SIGTERM, then SIGKILL what is left)."""
        for process in host.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for process in host.processes:
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        self.kill_all(host)

    def close(self) -> None:
        """Stop everything and remove the namespaces, links and bridge (idempotent)."""
        for host in reversed(list(self.hosts.values())):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                self.stop(host, timeout=10)
            _ip("netns", "del", host.netns, check=False)
            _ip("link", "del", host.link, check=False)
        self.hosts.clear()
        _ip("link", "del", self.bridge, check=False)
