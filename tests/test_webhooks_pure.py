"""Pure webhook logic: matching, signatures, the backoff schedule and delivery state changes."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import random
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tables.webhooks import (
    EXPIRED,
    FORBIDDEN,
    BackoffPolicy,
    DeliveryState,
    Outcome,
    OutcomeKind,
    Status,
    Subscription,
    SubscriptionIndex,
    apply_outcome,
    compute_signature,
    parse_signature_header,
    pattern_matches,
    signature_header,
    validate_pattern,
    verify_signature,
)

SECRET = b"s3cr3t-s3cr3t-s3cr3t"
HOUR = 3600.0


def sub(sub_id: str, tenant: str, *patterns: str, active: bool = True) -> Subscription:
    return Subscription(sub_id, tenant, "https://example.com/h", patterns, SECRET, active)


# -- matching ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "event_type", "expected"),
    [
        ("*", "work_order.created", True),
        ("work_order.*", "work_order.status_changed", True),
        ("work_order.*", "approval.requested", False),
        ("compliance.violation_detected", "compliance.violation_detected", True),
        ("compliance.violation_detected", "compliance.violation_resolved", False),
        ("approval.*", "approvals.requested", False),
    ],
)
def test_pattern_matches(pattern: str, event_type: str, expected: bool) -> None:
    assert pattern_matches(validate_pattern(pattern), event_type) is expected


@pytest.mark.parametrize(
    "bad", ["", "work_order", "work_order.", "*.created", "nope.*", "work_order.**", "a.b.c", "W.*"]
)
def test_bad_patterns_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        validate_pattern(bad)


def test_index_matches_by_tenant_type_and_active_flag() -> None:
    index = SubscriptionIndex(
        [
            sub("a", "t1", "work_order.*"),
            sub("b", "t1", "compliance.violation_detected"),
            sub("c", "t2", "*"),
            sub("d", "t1", "*", active=False),
        ]
    )
    assert [s.id for s in index.matching("t1", "work_order.created")] == ["a"]
    assert [s.id for s in index.matching("t1", "compliance.violation_detected")] == ["b"]
    assert index.matching("t3", "work_order.created") == []
    assert [s.id for s in index.matching("t2", "system.backup_completed")] == ["c"]
    assert index.has_tenant("t1") and not index.has_tenant("t3")
    assert index.get("d") is not None and "d" not in {s.id for s in index.active()}


def test_secret_and_url_stay_out_of_repr() -> None:
    text = repr(Subscription("a", "t", "https://x.example/?token=abc", ("*",), SECRET))
    assert "s3cr3t" not in text and "token=abc" not in text


# -- signatures --------------------------------------------------------------------------------


def test_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    body = b'{"id":"x"}'
    expected = hmac.new(SECRET, b"1700000000." + body, hashlib.sha256).hexdigest()
    assert compute_signature(SECRET, 1_700_000_000, body) == expected
    assert signature_header([SECRET], 1_700_000_000, body) == f"t=1700000000,v1={expected}"


def test_verify_accepts_valid_and_refuses_tampering() -> None:
    body = b'{"id":"x"}'
    header = signature_header([SECRET], 1000, body)
    assert verify_signature(header, body, [SECRET], now=1000)
    assert verify_signature(header, body, [b"other", SECRET], now=1200)
    assert not verify_signature(header, body + b" ", [SECRET], now=1000)
    assert not verify_signature(header, body, [b"wrong-secret"], now=1000)
    assert not verify_signature(header, body, [SECRET], now=1000 + 301)  # replay window
    forged = header.replace("t=1000", "t=1001")
    assert not verify_signature(forged, body, [SECRET], now=1000)


def test_rotation_signs_with_both_secrets() -> None:
    header = signature_header([b"new-secret-0123456", SECRET], 5, b"{}")
    assert verify_signature(header, b"{}", [SECRET], now=5)
    assert verify_signature(header, b"{}", [b"new-secret-0123456"], now=5)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "t=1",
        "v1=" + "a" * 64,
        "t=x,v1=" + "a" * 64,
        "t=1,t=2,v1=" + "a" * 64,
        "t=1,v1=zz",
        "junk",
    ],
)
def test_malformed_headers_do_not_verify(header: str) -> None:
    assert parse_signature_header(header) is None
    assert not verify_signature(header, b"{}", [SECRET], now=1)


@given(st.binary(max_size=512), st.integers(0, 10**11), st.binary(min_size=1, max_size=64))
def test_signature_roundtrip_property(body: bytes, t: int, secret: bytes) -> None:
    assert verify_signature(signature_header([secret], t, body), body, [secret], now=t)


# -- backoff -----------------------------------------------------------------------------------


def test_default_schedule_fits_48h_and_ends_at_the_deadline() -> None:
    policy = BackoffPolicy()
    times = policy.schedule(random.Random(7))
    assert times[0] == 0 and times[-1] == 48 * HOUR
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] == pytest.approx(30, rel=0.2)
    assert max(gaps) <= 4 * HOUR * 1.2
    assert 15 <= len(times) <= 25  # about 10 doubling steps, then 4 h steps


@given(
    seed=st.integers(0, 2**32),
    base=st.floats(0.1, 600),
    factor=st.floats(1, 2000),
    jitter=st.floats(0, 0.9),
    failures=st.integers(1, 80),
)
def test_delay_within_jitter_bounds_of_capped_exponential(
    seed: int, base: float, factor: float, jitter: float, failures: int
) -> None:
    policy = BackoffPolicy(base_seconds=base, max_seconds=base * factor, jitter=jitter)
    nominal = min(base * 2 ** (failures - 1), base * factor)
    delay = policy.delay(failures, random.Random(seed))
    assert nominal * (1 - jitter) - 1e-9 <= delay <= nominal * (1 + jitter) + 1e-9
    assert policy.bounds(failures) == pytest.approx(
        (nominal * (1 - jitter), nominal * (1 + jitter))
    )


@settings(max_examples=50)
@given(seed=st.integers(0, 2**32), jitter=st.floats(0, 0.5))
def test_schedule_properties(seed: int, jitter: float) -> None:
    policy = BackoffPolicy(jitter=jitter)
    times = policy.schedule(random.Random(seed), start=1000.0)
    assert times == sorted(times) and times[-1] == 1000.0 + policy.budget_seconds
    # nominal delays never decrease; every gap but the last (cut at the deadline) is in bounds
    gaps = [b - a for a, b in itertools.pairwise(times)]
    for n, gap in enumerate(gaps[:-1], start=1):
        low, high = policy.bounds(n)
        assert low - 1e-6 <= gap <= high + 1e-6
        assert policy.nominal(n) <= policy.nominal(n + 1)


def test_mean_delay_grows_with_failures() -> None:
    policy = BackoffPolicy()
    rng = random.Random(1)
    means = [sum(policy.delay(n, rng) for _ in range(400)) / 400 for n in range(1, 12)]
    assert all(a < b for a, b in itertools.pairwise(means) if b < 4 * HOUR * 0.9)
    assert means[0] == pytest.approx(30, rel=0.05)


# -- delivery state ----------------------------------------------------------------------------


def _fail(state: DeliveryState, now: float, policy: BackoffPolicy, seed: int = 0) -> DeliveryState:
    out = Outcome(OutcomeKind.HTTP_ERROR, status=500)
    return apply_outcome(
        state, out, started_at=now, now=now, policy=policy, rng=random.Random(seed)
    )


def test_success_after_failures() -> None:
    policy = BackoffPolicy()
    state = _fail(DeliveryState.new(100.0), 100.0, policy)
    assert state.status is Status.PENDING and state.attempts == 1
    assert 100 + 24 <= state.next_attempt_at <= 100 + 36
    assert state.first_attempt_at == 100.0 and state.last_error == "HTTP 500"
    done = apply_outcome(
        state, Outcome(OutcomeKind.DELIVERED, 204), started_at=200, now=201, policy=policy,
        rng=random.Random(0),
    )  # fmt: skip
    assert done.status is Status.DELIVERED and done.attempts == 2 and done.finished_at == 201
    with pytest.raises(ValueError):
        _fail(done, 300, policy)


def test_expires_after_budget_and_never_schedules_past_it() -> None:
    policy = BackoffPolicy(base_seconds=10, max_seconds=HOUR, budget_seconds=2 * HOUR)
    state = DeliveryState.new(0.0)
    now = 0.0
    while state.status is Status.PENDING:
        state = _fail(state, now, policy, seed=state.attempts)
        if state.status is Status.PENDING:
            assert state.next_attempt_at <= 2 * HOUR
            now = state.next_attempt_at
    assert state.dead_reason == EXPIRED and now == 2 * HOUR and state.finished_at == 2 * HOUR


def test_forbidden_is_dead_at_once() -> None:
    out = Outcome(OutcomeKind.FORBIDDEN, detail="loopback")
    state = apply_outcome(
        DeliveryState.new(0), out, started_at=0, now=0, policy=BackoffPolicy(),
        rng=random.Random(0),
    )  # fmt: skip
    assert state.status is Status.DEAD and state.dead_reason == FORBIDDEN
    assert state.attempts == 1 and state.last_error == "forbidden:loopback"


# -- the documentation -------------------------------------------------------------------------

DOC = Path(__file__).resolve().parents[1] / "docs" / "webhooks.md"


def test_doc_test_vector_and_snippet_verify() -> None:
    text = DOC.read_text()
    body = b'{"id":"01950f6e-3a2b-7c4d-9e8f-0123456789ab"}'
    sig = compute_signature(b"whsec_example_0123456789", 1767225600, body)
    assert f"v1={sig}" in text
    snippet = text.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, object] = {}
    exec(snippet, namespace)
    verify = namespace["verify_wo_webhook"]
    now = int(time.time())
    header = signature_header([SECRET, b"old-secret-0123456789"], now, body)
    assert verify(SECRET, header, body)  # type: ignore[operator]
    assert verify(b"old-secret-0123456789", header, body)  # type: ignore[operator]
    assert not verify(SECRET, header, body + b"x")  # type: ignore[operator]
    assert not verify(SECRET, signature_header([SECRET], now - 301, body), body)  # type: ignore[operator]
