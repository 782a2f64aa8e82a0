"""Egress policy for function fetches: which addresses may be reached, through which proxy.

Pure decisions; the fetcher applies them to every resolved address and on every redirect.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from .config import EgressConfig

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# Cloud metadata endpoints, named so the refusal message says what they are.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)


def parse_ip(host: str) -> IPAddress | None:
    """Return the address if `host` is an IP literal (brackets allowed), else None."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _effective(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True)
class EgressPolicy:
    """The operator's egress rules, parsed."""

    networks: tuple[IPNetwork, ...]
    hosts: frozenset[str]

    @classmethod
    def from_config(cls, config: EgressConfig) -> EgressPolicy:
        """Parse allowlist entries into networks (CIDRs or addresses) and host names."""
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        for entry in config.allow:
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                hosts.add(entry.lower().rstrip("."))
        return cls(tuple(networks), frozenset(hosts))

    def host_allowed(self, host: str) -> bool:
        """Tell whether the operator allowlisted this host name."""
        return host.lower().rstrip(".") in self.hosts

    def refusal(self, ip: IPAddress, host: str) -> str | None:
        """Return why a connection to `ip` (for `host`) is refused, or None when allowed."""
        if self.host_allowed(host):
            return None
        addr = _effective(ip)
        if any(addr in net for net in self.networks):
            return None
        if addr in METADATA_ADDRESSES:
            what = "a cloud metadata address"
        elif addr.is_loopback:
            what = "a loopback address"
        elif addr.is_link_local:
            what = "a link-local address"
        elif addr.is_private:
            what = "a private address"
        elif not addr.is_global or addr.is_multicast:
            what = "not a public address"
        else:
            return None
        return (
            f"{host} resolves to {addr}, {what}; eventfn refuses it unless the operator "
            "allowlists it (egress allow setting)"
        )


def _no_proxy_match(host: str, port: int | None, entries: tuple[str, ...]) -> bool:
    host = host.lower().strip("[]")
    ip = parse_ip(host)
    for raw in entries:
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        entry_host, _, entry_port = (
            entry.rpartition(":")
            if entry.count(":") == 1
            else (
                entry,
                "",
                "",
            )
        )
        if entry_port and port is not None and entry_port != str(port):
            continue
        if ip is not None:
            try:
                if ip in ipaddress.ip_network(entry_host.strip("[]"), strict=False):
                    return True
            except ValueError:
                pass
            continue
        name = entry_host.lstrip("*").lstrip(".")
        if host == name or host.endswith("." + name):
            return True
    return False


def proxy_for(url: str, config: EgressConfig) -> str | None:
    """Return the proxy URL to use for `url` (curl's HTTPS_PROXY/HTTP_PROXY/NO_PROXY rules)."""
    parts = urlsplit(url)
    proxy = config.https_proxy if parts.scheme == "https" else config.http_proxy
    if not proxy:
        return None
    if _no_proxy_match(parts.hostname or "", parts.port, config.no_proxy):
        return None
    return proxy
