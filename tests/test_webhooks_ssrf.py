"""The SSRF guard: address classes, URL forms, DNS answers, and refusal before any connection."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from connectors.webhook_http import (
    AddressPolicy,
    ForbiddenTarget,
    GuardedResolver,
    HttpLimits,
    WebhookSender,
    address_kind,
)
from tables.webhooks import OutcomeKind
from tests.webhooks_testkit import Receiver, connects_fixture  # noqa: F401 (fixture)

STRICT = AddressPolicy()
PRIVATE_OK = AddressPolicy(allow_private_networks=True, allow_http=True)  # loopback receivers
LOOPBACK_ONLY = AddressPolicy.build(False, ["127.0.0.0/8"], allow_http=True)


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("93.184.216.34", "global"),
        ("2606:4700:4700::1111", "global"),
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:10.1.2.3", "private"),
        ("64:ff9b::7f00:1", "loopback"),  # NAT64-embedded
        ("2002:7f00:1::1", "loopback"),  # 6to4-embedded
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "tunnel"),  # Teredo
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "private"),  # CGNAT
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("169.254.169.254", "link_local"),
        ("fe80::1", "link_local"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("240.0.0.1", "reserved"),
        ("::7f00:1", "reserved"),  # IPv4-compatible (deprecated)
        ("192.0.2.10", "non_global"),  # documentation
        ("198.18.0.1", "non_global"),  # benchmarking
    ],
)
def test_address_kinds(address: str, kind: str) -> None:
    assert address_kind(ipaddress.ip_address(address)) == kind


@pytest.mark.parametrize(
    ("address", "strict", "private_ok", "loopback_only"),
    [
        ("93.184.216.34", None, None, None),
        ("127.0.0.1", "loopback", None, None),
        ("::ffff:127.0.0.1", "loopback", None, None),
        ("::1", "loopback", None, "loopback"),  # the CIDR lists IPv4 loopback only
        ("10.0.0.1", "private", None, "private"),
        ("169.254.169.254", "metadata", "metadata", "metadata"),  # never by the flag
        ("fd00:ec2::254", "metadata", "metadata", "metadata"),
        ("169.254.1.1", "link_local", None, "link_local"),
        ("0.0.0.0", "unspecified", "unspecified", "unspecified"),
        ("224.0.0.1", "multicast", "multicast", "multicast"),
        ("240.0.0.1", "reserved", "reserved", "reserved"),
    ],
)
def test_policies(address: str, strict: Any, private_ok: Any, loopback_only: Any) -> None:
    ip = ipaddress.ip_address(address)
    assert STRICT.refusal(ip) == strict
    assert PRIVATE_OK.refusal(ip) == private_ok
    assert LOOPBACK_ONLY.refusal(ip) == loopback_only


def test_metadata_needs_an_explicit_cidr() -> None:
    policy = AddressPolicy.build(False, ["169.254.169.254/32"])
    assert policy.refusal(ipaddress.ip_address("169.254.169.254")) is None


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("file:///etc/passwd", "scheme"),
        ("gopher://127.0.0.1:70/_x", "scheme"),
        ("ftp://example.com/x", "scheme"),
        ("javascript:alert(1)", "scheme"),
        ("http://user:pw@example.com/", "userinfo"),
        ("http:///nohost", "no_host"),
        ("http://127.0.0.1/", "loopback"),
        ("http://[::1]:8080/", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://[::ffff:7f00:1]/", "loopback"),
        ("http://10.0.0.1/hook", "private"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://[fe80::1]/", "link_local"),
        ("http://0.0.0.0:8080/", "unspecified"),
        ("http://2130706433/", "non_canonical_ip"),  # decimal 127.0.0.1
        ("http://0177.0.0.1/", "non_canonical_ip"),  # octal
        ("http://0x7f.0.0.1/", "non_canonical_ip"),  # hex
        ("http://0x7f000001/", "non_canonical_ip"),
        ("http://127.1/", "non_canonical_ip"),  # short form
        ("http://017700000001/", "non_canonical_ip"),
        ("http://localhost:8080/", "loopback"),
        ("http://api.localhost/", "loopback"),
        ("http://LOCALHOST./", "loopback"),
    ],
)
def test_urls_refused_statically(url: str, reason: str) -> None:
    with pytest.raises(ForbiddenTarget) as info:
        STRICT.check_url(url)
    assert info.value.reason == reason


@pytest.mark.parametrize("url", ["https://hooks.example.com/wo", "https://93.184.216.34:8443/x"])
def test_public_urls_pass_static_checks(url: str) -> None:
    assert str(STRICT.check_url(url)).startswith("https://")


def test_plain_http_only_when_allowed() -> None:
    # bodies are L3/L4 events and signatures: no cleartext unless configured for development
    for policy in (STRICT, AddressPolicy(allow_private_networks=True)):
        with pytest.raises(ForbiddenTarget) as info:
            policy.check_url("http://hooks.example.com/wo")
        assert info.value.reason == "plain_http"
    allowing = AddressPolicy.build(allow_http=True)
    assert str(allowing.check_url("http://93.184.216.34:8443/x")) == "http://93.184.216.34:8443/x"
    with pytest.raises(ForbiddenTarget) as info:  # the address rules still apply
        allowing.check_url("http://127.0.0.1/")
    assert info.value.reason == "loopback"


def test_non_canonical_ip_refused_even_when_private_allowed() -> None:
    with pytest.raises(ForbiddenTarget):
        PRIVATE_OK.check_url("http://2130706433/")


class FakeDns(AbstractResolver):
    """Answers from a table; never touches a real resolver."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        out: list[ResolveResult] = []
        for address in self.table.get(host, []):
            fam = socket.AF_INET6 if ":" in address else socket.AF_INET
            out.append(
                {"hostname": host, "host": address, "port": port, "family": fam, "proto": 0,
                 "flags": socket.AI_NUMERICHOST}
            )  # fmt: skip
        if not out:
            raise OSError("no such host")
        return out

    async def close(self) -> None:
        pass


DNS = {
    "rebind.example": ["127.0.0.1"],
    "metadata.example": ["169.254.169.254"],
    "internal.example": ["10.1.2.3"],
    "mixed.example": ["93.184.216.34", "192.168.0.10"],  # one bad answer spoils the lot
    "mapped.example": ["::ffff:127.0.0.1"],
    "v6local.example": ["::1"],
    "public.example": ["93.184.216.34"],
}


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("rebind.example", "loopback"),
        ("metadata.example", "metadata"),
        ("internal.example", "private"),
        ("mixed.example", "private"),
        ("mapped.example", "loopback"),
        ("v6local.example", "loopback"),
    ],
)
async def test_dns_answers_are_checked(host: str, reason: str) -> None:
    resolver = GuardedResolver(STRICT, FakeDns(DNS))
    with pytest.raises(ForbiddenTarget) as info:
        await resolver.resolve(host, 80)
    assert info.value.reason == reason


async def test_real_localhost_resolution_is_refused() -> None:
    # /etc/hosts only: no network needed. The name itself is refused before resolving, and the
    # resolver refuses the loopback answer as well.
    with pytest.raises(ForbiddenTarget):
        await GuardedResolver(STRICT).resolve("localhost", 80, socket.AF_UNSPEC)


async def test_public_answer_passes() -> None:
    results = await GuardedResolver(STRICT, FakeDns(DNS)).resolve("public.example", 443)
    assert [r["host"] for r in results] == ["93.184.216.34"]


def _tracing() -> tuple[aiohttp.TraceConfig, list[str]]:
    events: list[str] = []
    trace = aiohttp.TraceConfig()

    async def on_request(*_: Any) -> None:
        events.append("request")

    trace.on_request_start.append(on_request)
    return trace, events


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/hook",
        "http://[fd00:ec2::254]/",
        "file:///etc/passwd",
        "gopher://127.0.0.1:70/_stats",
        "http://2130706433/",
        "http://user:pw@public.example/",
    ],
)
async def test_sender_refuses_before_any_request(url: str, connects: list[Any]) -> None:
    trace, events = _tracing()
    sender = WebhookSender(LOOPBACK_ONLY, HttpLimits(1, 2, 100), FakeDns(DNS), [trace])
    try:
        outcome = await sender.send(url, b"{}", {})
    finally:
        await sender.close()
    assert outcome.kind is OutcomeKind.FORBIDDEN
    assert events == [] and connects == []  # refused before aiohttp even began the request


@pytest.mark.parametrize("host", ["metadata.example", "internal.example", "rebind.example"])
async def test_sender_refuses_dns_names_before_connecting(host: str, connects: list[Any]) -> None:
    sender = WebhookSender(STRICT, HttpLimits(1, 2, 100), FakeDns(DNS))
    try:
        outcome = await sender.send(f"http://{host}/hook", b"{}", {})
    finally:
        await sender.close()
    assert outcome.kind is OutcomeKind.FORBIDDEN
    assert connects == []  # the resolver refused: no address ever reached a socket


async def test_loopback_receiver_untouched_without_the_allow_flag(connects: list[Any]) -> None:
    receiver = await Receiver().start()
    dns = FakeDns({"receiver.example": ["127.0.0.1"]})
    strict = WebhookSender(STRICT, HttpLimits(1, 2, 100), dns)
    allowed = WebhookSender(LOOPBACK_ONLY, HttpLimits(1, 2, 100), dns)
    try:
        for url in (receiver.url("/ok"), f"http://receiver.example:{receiver.port}/ok",
                    f"http://[::ffff:127.0.0.1]:{receiver.port}/ok"):  # fmt: skip
            outcome = await strict.send(url, b"{}", {})
            assert outcome.kind is OutcomeKind.FORBIDDEN
        assert receiver.hits == [] and connects == []
        # The same receiver is reachable once configuration allows loopback.
        assert (await allowed.send(receiver.url("/ok"), b"{}", {})).kind is OutcomeKind.DELIVERED
        named = await allowed.send(f"http://receiver.example:{receiver.port}/ok", b"{}", {})
        assert named.kind is OutcomeKind.DELIVERED and len(receiver.hits) == 2
        assert connects  # the probe sees real connections, so its silence above means something
    finally:
        await strict.close()
        await allowed.close()
        await receiver.stop()


async def test_redirects_are_not_followed_and_big_answers_are_bounded() -> None:
    receiver = await Receiver().start()
    sender = WebhookSender(LOOPBACK_ONLY, HttpLimits(1, 5, 1024))
    try:
        redirect = await sender.send(receiver.url("/redirect"), b"{}", {})
        assert redirect.kind is OutcomeKind.HTTP_ERROR and redirect.status == 302
        assert receiver.count("/ok") == 0
        big = await sender.send(receiver.url("/big"), b"{}", {})
        assert big.kind is OutcomeKind.DELIVERED
        assert (await sender.send(receiver.url("/fail"), b"{}", {})).status == 500
    finally:
        await sender.close()
        await receiver.stop()


async def test_timeout_and_refused_connection_are_retryable_outcomes() -> None:
    receiver = await Receiver(slow_seconds=1.2).start()
    sender = WebhookSender(LOOPBACK_ONLY, HttpLimits(0.5, 0.5, 100))
    try:
        slow = await sender.send(receiver.url("/slow"), b"{}", {})
        assert slow.kind is OutcomeKind.TIMEOUT
        port = receiver.port
    finally:
        await sender.close()
        await receiver.stop()
    sender = WebhookSender(LOOPBACK_ONLY, HttpLimits(0.5, 0.5, 100))
    try:
        gone = await sender.send(f"http://127.0.0.1:{port}/ok", b"{}", {})
        assert gone.kind is OutcomeKind.CONNECTION_ERROR
    finally:
        await sender.close()
