"""What a session shows its owner about where it is: a short description of the browser or
client, parsed from the User-Agent by `ua-parser` (the uap-core rules, `ua-parser-builtins`),
and the client address coarsened to its network — enough to tell "Firefox on Windows, at home"
from "curl, somewhere else", not enough to locate anyone (no address is stored whole)."""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass

from ua_parser import parse

MAX_DESCRIPTION = 100
MAX_USER_AGENT = 512  # longer headers are cut before parsing: the rules are regexes
UNKNOWN = "Unknown client"
IPV4_PREFIX = 24
IPV6_PREFIX = 48


@dataclass(frozen=True)
class Device:
    """The browser or client of a request, and where it came from (a network, not an address).
    Worked out only when asked for — when a session is opened — so a request that fails (a
    wrong password, a made-up token) never pays for parsing its User-Agent."""

    user_agent: str | None
    address: str

    @functools.cached_property
    def description(self) -> str:
        return describe(self.user_agent)

    @functools.cached_property
    def place(self) -> str | None:
        return coarsen(self.address)


def describe(user_agent: str | None) -> str:
    """ "Firefox 128 on Windows 10", "Mobile Safari 17 on iOS 17", "curl 8"; "Unknown client"
    when the User-Agent is missing or means nothing to the rules."""
    if not user_agent:
        return UNKNOWN
    result = parse(user_agent[:MAX_USER_AGENT])
    agent, system = result.user_agent, result.os
    if agent is None or agent.family == "Other":
        name = None
    else:
        name = f"{agent.family} {agent.major}" if agent.major else agent.family
    if system is None or system.family == "Other":
        platform = None
    else:
        platform = f"{system.family} {system.major}" if system.major else system.family
    if name and platform:
        text = f"{name} on {platform}"
    else:
        text = name or (f"A client on {platform}" if platform else UNKNOWN)
    return text[:MAX_DESCRIPTION]


def coarsen(address: str) -> str | None:
    """The address's network: an IPv4 /24, an IPv6 /48 (an IPv4-mapped one as IPv4); None
    when it is no IP address."""
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = IPV4_PREFIX if ip.version == 4 else IPV6_PREFIX
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def warm_up() -> None:
    """Compile the parser's rules now (about 0.15 s) rather than on the first login, where it
    would hold up the event loop."""
    describe("Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0")
