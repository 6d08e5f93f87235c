"""The webhook HTTP sender (aiohttp) and its server-side request forgery (SSRF) guard.

Before any connection: the URL must be ``https`` (``http`` only with ``allow_http``: bodies are
L3/L4 events and their signatures, not for cleartext) with a host and no userinfo, an IP
literal must be canonical (``2130706433``, ``0177.0.0.1``, ``127.1`` are refused: resolvers read
them as 127.0.0.1), and every address a host name resolves to must be allowed. Addresses are
classified after unwrapping IPv4 embedded in IPv6 (IPv4-mapped ``::ffff:a.b.c.d``, NAT64
``64:ff9b::/96``, 6to4 ``2002::/16``); Teredo is refused. Allowed without configuration: global
unicast only. ``allow_private_networks`` adds loopback, private (RFC 1918, ULA, CGNAT) and
link-local, but never the cloud metadata addresses; ``allowed_networks`` (CIDRs) admits exactly
what it lists. Unspecified, multicast and broadcast addresses are never allowed.

The check runs inside aiohttp's resolver, so the addresses checked are the addresses connected
to (no DNS rebinding window). Redirects are not followed (a 3xx is a failed attempt), proxies
from the environment are ignored, cookies are never stored, timeouts and the bytes read from a
response are bounded. Nothing here logs URLs (they can carry tokens), bodies or secrets.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from tables.webhooks import Outcome, OutcomeKind

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOWED_SCHEMES: Final = frozenset({"http", "https"})
# Cloud instance metadata services: credentials live there; only an explicit CIDR admits them.
METADATA_ADDRESSES: Final = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # CGNAT, RFC 6598
_BROADCAST = ipaddress.ip_address("255.255.255.255")
_PRIVATE_KINDS = frozenset({"loopback", "private", "link_local"})
_NEVER = frozenset({"unspecified", "multicast", "broadcast"})
_READ_CHUNK = 16_384


class ForbiddenTarget(ValueError):
    """The guard refused a URL or an address; ``reason`` is a short code, safe to log."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"webhook target refused: {reason}")
        self.reason = reason


def unwrap(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address embeds (mapped, NAT64, 6to4), else ``ip`` itself."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if ip.sixtofour is not None:
            return ip.sixtofour
    return ip


def address_kind(ip: IPAddress) -> str:
    """``global`` or why not: loopback, private, link_local, unspecified, multicast, ...."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.teredo is not None:
        return "tunnel"
    ip = unwrap(ip)
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_multicast:
        return "multicast"
    if ip == _BROADCAST:
        return "broadcast"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link_local"
    if ip in _SHARED or _rfc_private(ip):
        return "private"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "non_global"  # documentation, benchmarking, IETF protocol assignments ...
    return "global"


def _rfc_private(ip: IPAddress) -> bool:
    if isinstance(ip, ipaddress.IPv4Address):
        return any(ip in n for n in _RFC1918)
    return ip in _ULA


_RFC1918 = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
_ULA = ipaddress.ip_network("fc00::/7")


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """Which resolved addresses a webhook may connect to (see the module docstring)."""

    allow_private_networks: bool = False
    allowed_networks: tuple[IPNetwork, ...] = ()
    allow_http: bool = False  # plain http:// targets (tests, a local receiver in development)

    @classmethod
    def build(
        cls, allow_private: bool = False, networks: Sequence[str] = (), allow_http: bool = False
    ) -> AddressPolicy:
        """From settings values; a bad CIDR raises ValueError."""
        cidrs = tuple(ipaddress.ip_network(n, strict=False) for n in networks)
        return cls(allow_private, cidrs, allow_http)

    def refusal(self, ip: IPAddress) -> str | None:
        """None if ``ip`` is allowed, else the reason code."""
        kind = address_kind(ip)
        if kind in _NEVER:
            return kind
        inner = unwrap(ip)
        if any(ip in n or inner in n for n in self.allowed_networks):
            return None
        if inner in METADATA_ADDRESSES or ip in METADATA_ADDRESSES:
            return "metadata"
        if kind == "global":
            return None
        if kind in _PRIVATE_KINDS and self.allow_private_networks:
            return None
        return kind

    def check_address(self, ip: IPAddress) -> None:
        """Raise ForbiddenTarget if ``ip`` is not allowed."""
        reason = self.refusal(ip)
        if reason is not None:
            raise ForbiddenTarget(reason)

    def check_url(self, url: str | URL) -> URL:
        """Static checks (scheme, host, userinfo, IP literals); returns the parsed URL."""
        try:
            parsed = url if isinstance(url, URL) else URL(url)
        except (ValueError, TypeError) as exc:
            raise ForbiddenTarget("invalid_url") from exc
        if parsed.scheme not in ALLOWED_SCHEMES:
            raise ForbiddenTarget("scheme")
        if parsed.raw_user is not None or parsed.raw_password is not None:
            raise ForbiddenTarget("userinfo")
        host = (parsed.raw_host or "").rstrip(".").lower()
        if not host:
            raise ForbiddenTarget("no_host")
        literal = _ip_literal(host)
        if literal is not None:
            self.check_address(literal)
        elif _numeric_looking(host):
            raise ForbiddenTarget("non_canonical_ip")
        elif host == "localhost" or host.endswith(".localhost"):
            if self.refusal(ipaddress.ip_address("127.0.0.1")) is not None:
                raise ForbiddenTarget("loopback")
        if parsed.scheme == "http" and not self.allow_http:
            raise ForbiddenTarget("plain_http")  # after the address checks: theirs say more
        return parsed


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0] if ":" in host else host)
    except ValueError:
        return None


def _numeric_looking(host: str) -> bool:
    """Forms inet_aton accepts (decimal, octal, hex, short) that are not canonical dotted quads."""
    if ":" in host:
        return True  # an IPv6-ish host that ipaddress could not parse
    try:
        socket.inet_aton(host)
    except OSError:
        pass
    else:
        return True
    labels = host.split(".")
    return all(label.isdigit() or label.startswith("0x") for label in labels if label)


class GuardedResolver(AbstractResolver):
    """Resolves with ``inner`` and refuses the whole answer if any address is not allowed."""

    def __init__(self, policy: AddressPolicy, inner: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if self._inner is None:
            self._inner = ThreadedResolver()
        results = await self._inner.resolve(host, port, family)
        if not results:
            raise OSError(f"no addresses for host (port {port})")
        for result in results:
            self._policy.check_address(ipaddress.ip_address(result["host"].split("%", 1)[0]))
        return results

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """Bounded timeouts and response reading."""

    connect_seconds: float = 5.0
    total_seconds: float = 15.0
    max_response_bytes: int = 65_536

    def timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(
            total=self.total_seconds,
            connect=self.connect_seconds,
            sock_connect=self.connect_seconds,
            sock_read=self.total_seconds,
        )


@dataclass
class WebhookSender:
    """POSTs signed webhooks; ``send`` never raises for a failed attempt, it returns an Outcome."""

    policy: AddressPolicy
    limits: HttpLimits = field(default_factory=HttpLimits)
    resolver: AbstractResolver | None = None  # inner resolver (tests inject names)
    trace_configs: list[aiohttp.TraceConfig] = field(default_factory=list)
    user_agent: str = "wo-stream-webhooks/1"
    _session: aiohttp.ClientSession | None = field(default=None, init=False, repr=False)

    async def start(self) -> None:
        if self._session is not None:
            return
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(self.policy, self.resolver),
            limit=0,  # per-endpoint concurrency is bounded by the dispatcher
            ttl_dns_cache=30,
            enable_cleanup_closed=True,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self.limits.timeout(),
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            auto_decompress=False,
            trace_configs=self.trace_configs or None,
        )

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def send(self, url: str, body: bytes, headers: Mapping[str, str]) -> Outcome:
        """One attempt: guard, POST, read at most ``max_response_bytes``, classify."""
        try:
            target = self.policy.check_url(url)
        except ForbiddenTarget as exc:
            return Outcome(OutcomeKind.FORBIDDEN, detail=exc.reason)
        if self._session is None:
            await self.start()
        assert self._session is not None
        request_headers = {
            "Content-Type": "application/json",
            "User-Agent": self.user_agent,
            **headers,
        }
        try:
            async with self._session.post(
                target, data=body, headers=request_headers, allow_redirects=False
            ) as response:
                await _drain(response, self.limits.max_response_bytes)
                status = response.status
        except Exception as exc:
            return classify_error(exc)
        if 200 <= status < 300:
            return Outcome(OutcomeKind.DELIVERED, status=status)
        return Outcome(OutcomeKind.HTTP_ERROR, status=status)


async def _drain(response: aiohttp.ClientResponse, limit: int) -> None:
    """Read and drop at most ``limit`` bytes (a longer answer closes the connection)."""
    seen = 0
    while seen <= limit:
        chunk = await response.content.read(min(_READ_CHUNK, limit + 1 - seen) or 1)
        if not chunk:
            return
        seen += len(chunk)


def classify_error(exc: BaseException) -> Outcome:
    """Map an aiohttp/OS error to an Outcome (class names only; messages may hold the URL)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ForbiddenTarget):
            return Outcome(OutcomeKind.FORBIDDEN, detail=cause.reason)
        nested = getattr(cause, "os_error", None)
        cause = nested if isinstance(nested, BaseException) else cause.__cause__
    if isinstance(exc, aiohttp.InvalidURL):
        return Outcome(OutcomeKind.FORBIDDEN, detail="invalid_url")
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return Outcome(OutcomeKind.TIMEOUT, detail=type(exc).__name__)
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return Outcome(OutcomeKind.CONNECTION_ERROR, detail="dns")
    return Outcome(OutcomeKind.CONNECTION_ERROR, detail=type(exc).__name__)
