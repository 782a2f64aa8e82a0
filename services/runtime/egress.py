"""Egress policy for function fetches: which addresses may be reached, through which proxy.

Pure decisions. The fetcher's connector applies `EgressPolicy.refusal` to every address it
is about to connect to (IP literals and resolved names alike, on every redirect hop), and,
with a proxy, to the addresses of the target name before the request goes to the proxy.
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
# IPv6 forms that carry an IPv4 address in their last 32 bits and reach it where a
# translator or tunnel exists: IPv4-mapped, IPv4-translated (SIIT) and NAT64's well-known
# prefix. The embedded address is judged like the IPv4 address it is.
_EMBEDDING_LOW_32 = tuple(
    ipaddress.IPv6Network(n) for n in ("::ffff:0:0/96", "::ffff:0:0:0/96", "64:ff9b::/96")
)
# IPv6 ranges refused whatever they embed: IPv4-compatible addresses (deprecated, ::/96),
# local-use NAT64 (a site's own translator, RFC 8215), Teredo tunnels, and site-local
# addresses (deprecated, fec0::/10, still routed inside some networks).
_REFUSED_V6 = tuple(
    ipaddress.IPv6Network(n)
    for n in ("::/96", "64:ff9b:1::/48", "2001::/32", "fec0::/10", "100::/64")
)


def parse_ip(host: str) -> IPAddress | None:
    """Return the address if `host` is an IP literal (brackets allowed), else None."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """Return the IPv4 address an IPv6 address carries (mapped, SIIT, NAT64, 6to4), if any."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if any(ip in net for net in _EMBEDDING_LOW_32):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def _kind_of_refused(addr: IPAddress) -> str | None:
    """Name why an address (without embeddings) is not public, or None when it is."""
    if addr in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if addr.is_loopback:
        return "a loopback address"
    if addr.is_link_local:
        return "a link-local address"
    if addr.is_private:
        return "a private address"
    if not addr.is_global or addr.is_multicast or addr.is_unspecified or addr.is_reserved:
        return "not a public address"
    if isinstance(addr, ipaddress.IPv6Address) and any(addr in net for net in _REFUSED_V6):
        return "an IPv6 form refused because it can reach internal networks"
    return None


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
        """Return why a connection to `ip` (for `host`) is refused, or None when allowed.

        An IPv6 address that embeds an IPv4 address is refused when either is refused,
        and allowed when either is in an allowlisted network.
        """
        if self.host_allowed(host):
            return None
        inner = embedded_ipv4(ip)
        candidates = (ip,) if inner is None else (ip, inner)
        if any(addr in net for addr in candidates for net in self.networks):
            return None
        for addr in reversed(candidates):  # the embedded address names the real target
            what = _kind_of_refused(addr)
            if what is not None:
                shown = addr if addr == ip else f"{ip} ({addr})"
                return (
                    f"{host} resolves to {shown}, {what}; eventfn refuses it unless "
                    "allowlisted: EVENTFN_EGRESS_ALLOW on the platform, `eventfn preview "
                    "--allow` when previewing"
                )
        return None


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
