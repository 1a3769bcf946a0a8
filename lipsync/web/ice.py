"""Which local addresses aiortc offers as ICE host candidates.

aioice gathers every interface address except 127.0.0.1. A studio bound to loopback must offer
exactly that one (a browser on the same machine, or a test inside a network namespace that has
only `lo`), and a studio bound to one address should not advertise the others. aioice has no
option for this, so its address lookup is replaced once per process.
"""

from __future__ import annotations

import ipaddress

_installed: str | None = None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def offer_candidates_for(host: str) -> None:
    global _installed
    import aioice.ice  # aioice (comes with aiortc): the web extra, needed only by lipsync serve

    if _installed is not None:
        if _installed != host:
            raise RuntimeError(f"ICE addresses already set up for {_installed}; one studio host per process")
        return
    original = aioice.ice.get_host_addresses

    def addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        if is_loopback(host):
            return ["127.0.0.1"] if use_ipv4 else []
        if host in ("0.0.0.0", "::", ""):
            return original(use_ipv4, use_ipv6)
        return [host]

    aioice.ice.get_host_addresses = addresses
    _installed = host
