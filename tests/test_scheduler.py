"""Tests of pycontainer.manager._scheduler: admission, eviction planning and quantities."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycontainer.manager._scheduler import (
    Admission,
    Claim,
    Resources,
    eviction_order,
    machine_capacity,
    plan_admission,
    total,
)
from pycontainer.units import format_cpu, format_memory, parse_cpu, parse_memory

Mi = 1024**2
Gi = 1024**3


def claim(
    id: str, priority: int, cpu: int = 0, memory: int = 0, start: float = 0.0, name: str = ""
) -> Claim:
    return Claim(id, name or id, priority, Resources(cpu, memory), start)


def ids(admission: Admission) -> list[str]:
    return [v.id for v in admission.victims]


# --- Resources ----------------------------------------------------------------------------


def test_resources_arithmetic() -> None:
    a, b = Resources(1000, 2 * Gi), Resources(300, Gi)
    assert a + b == Resources(1300, 3 * Gi)
    assert a - b == Resources(700, Gi)
    assert total([a, b, b]) == Resources(1600, 4 * Gi)
    assert total([]) == Resources()
    assert b.fits_in(a)
    assert not a.fits_in(b)
    assert not Resources(1000, 0).fits_in(Resources(999, 10 * Gi))
    assert not Resources(0, Gi + 1).fits_in(Resources(10_000, Gi))
    # Nothing asked of a resource fits even where it is oversubscribed.
    assert Resources().fits_in(Resources(-5, -5))
    assert Resources(100, 0).fits_in(Resources(100, -Gi))


def test_machine_capacity() -> None:
    cap = machine_capacity()
    assert cap.cpu_millis >= 1000
    assert cap.cpu_millis % 1000 == 0
    assert cap.memory_bytes > 0


# --- plan_admission -----------------------------------------------------------------------

CAP = Resources(4000, 8 * Gi)


def test_fits_in_free_capacity() -> None:
    running = [claim("a", 9, 2000, 4 * Gi)]
    a = plan_admission(CAP, running, claim("x", 0, 2000, 4 * Gi))
    assert a.admitted
    assert a.victims == ()
    assert "free" in a.reason


def test_zero_resources_always_fit() -> None:
    # Even on an oversubscribed machine, with nothing lower to evict.
    running = [claim("a", 9, 5000, 9 * Gi)]
    a = plan_admission(CAP, running, claim("x", 0))
    assert a == Admission(True, (), a.reason)
    assert "exceed capacity" in a.reason


def test_evicts_lowest_priority_first() -> None:
    running = [
        claim("p3", 3, 1000, Gi, start=1),
        claim("p1", 1, 1000, Gi, start=1),
        claim("p2", 2, 1000, Gi, start=1),
        claim("p5", 5, 1000, Gi, start=1),
    ]
    a = plan_admission(CAP, running, claim("x", 4, 2000, Gi))
    assert a.admitted
    assert ids(a) == ["p1", "p2"]
    assert "p1" in a.reason
    assert "p2" in a.reason


def test_evicts_youngest_first_among_equals() -> None:
    running = [
        claim("old", 1, 1000, Gi, start=100),
        claim("young", 1, 1000, Gi, start=300),
        claim("middle", 1, 1000, Gi, start=200),
        claim("busy", 1, 1000, Gi, start=50),
    ]
    assert ids(plan_admission(CAP, running, claim("x", 2, 1000))) == ["young"]
    assert ids(plan_admission(CAP, running, claim("x", 2, 2500))) == ["young", "middle", "old"]


def test_never_evicts_equal_or_higher_priority() -> None:
    running = [claim("eq", 5, 2000, Gi, start=9), claim("hi", 6, 1000, Gi), claim("lo", 4, 1000)]
    a = plan_admission(CAP, running, claim("x", 5, 2000))
    assert not a.admitted
    assert a.victims == ()
    assert a.reason == (
        "needs cpu 2, memory 0; 0 cpu and 6Gi memory are free, and evicting the "
        "1 lower-priority container would free 1 cpu: short by 1 cpu"
    )


def test_refusal_says_what_is_short() -> None:
    # The example of the issue: 300m cpu and 2Gi free, two lower-priority
    # containers holding 500m cpu between them.
    cap = Resources(4000, 8 * Gi)
    running = [
        claim("big", 9, 3200, 6 * Gi),
        claim("lo1", 1, 200, 0),
        claim("lo2", 2, 300, 0),
    ]
    a = plan_admission(cap, running, claim("x", 5, 1500, 512 * Mi))
    assert not a.admitted
    assert a.victims == ()
    assert a.reason == (
        "needs cpu 1500m, memory 512Mi; 300m cpu and 2Gi memory are free, and evicting "
        "the 2 lower-priority containers would free 500m cpu: short by 700m cpu"
    )


def test_refusal_with_nothing_lower() -> None:
    running = [claim("a", 5, 3500, 7 * Gi)]
    a = plan_admission(CAP, running, claim("x", 5, 1000, 2 * Gi))
    assert not a.admitted
    assert a.reason == (
        "needs cpu 1, memory 2Gi; 500m cpu and 1Gi memory are free, and no running "
        "container has a priority below 5: short by 500m cpu and 1Gi memory"
    )


def test_refusal_over_total_capacity() -> None:
    # Lower-priority containers exist, but nothing could ever make room.
    running = [claim("lo", 0, 1000, Gi)]
    a = plan_admission(CAP, running, claim("x", 9, 6000, 9 * Gi))
    assert not a.admitted
    assert a.victims == ()
    assert a.reason == (
        "needs cpu 6, memory 9Gi, but the machine has only 4 cpu and 8Gi memory in all: "
        "short by 2 cpu and 1Gi memory"
    )


def test_unnecessary_victims_are_dropped() -> None:
    # Memory is what is short. The youngest low-priority container holds cpu
    # only; it is chosen first, then the older one that holds the memory, after
    # which the first turns out unnecessary.
    running = [
        claim("cpu-only", 1, 1000, 0, start=200),
        claim("memory", 1, 0, 4 * Gi, start=100),
        claim("rest", 9, 3000, 4 * Gi),
    ]
    a = plan_admission(CAP, running, claim("x", 5, 0, 2 * Gi))
    assert a.admitted
    assert ids(a) == ["memory"]


def test_no_victim_when_already_fits_after_first() -> None:
    running = [claim("a", 1, 2000, Gi, start=2), claim("b", 1, 2000, Gi, start=1)]
    a = plan_admission(CAP, running, claim("x", 2, 1500, Gi))
    assert ids(a) == ["a"]


# --- Property test --------------------------------------------------------------------------

resources = st.builds(
    Resources, st.integers(0, 8).map(lambda n: n * 500), st.integers(0, 8).map(lambda n: n * Gi)
)
claims = st.builds(
    Claim,
    id=st.uuids().map(str),
    name=st.sampled_from(["a", "b", "c"]),
    priority=st.integers(0, 4),
    resources=resources,
    start_time=st.integers(0, 5).map(float),
)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Resources, list[Claim], Claim]:
    """A capacity near what the running claims use (a little short to a little over,
    sometimes oversubscribed), so that evictions are the common case."""
    running = draw(st.lists(claims, max_size=8, unique_by=lambda c: c.id))
    used = total(c.resources for c in running)
    capacity = Resources(
        max(0, used.cpu_millis + draw(st.integers(-1000, 2000))),
        max(0, used.memory_bytes + draw(st.integers(-2, 4)) * Gi),
    )
    return capacity, running, draw(claims)


@given(scenarios())
def test_admission_invariants(scenario: tuple[Resources, list[Claim], Claim]) -> None:
    capacity, running, incoming = scenario
    a = plan_admission(capacity, running, incoming)
    need = incoming.resources
    free = capacity - total(c.resources for c in running)
    lower = [c for c in running if c.priority < incoming.priority]
    assert a.reason

    if not a.admitted:
        assert a.victims == ()
        assert not need.fits_in(free + total(c.resources for c in lower))
        return

    victims = list(a.victims)
    room = free + total(v.resources for v in victims)
    assert need.fits_in(room)
    assert all(v.priority < incoming.priority for v in victims)
    assert all(v in running for v in victims)
    assert len({v.id for v in victims}) == len(victims)
    assert victims == sorted(victims, key=eviction_order)
    # None evicted needlessly: without any one of them it would not fit.
    for v in victims:
        assert not need.fits_in(room - v.resources)
    # Victims only when needed at all.
    assert (victims == []) == need.fits_in(free)


# --- Quantities -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "millis"),
    [
        ("500m", 500),
        ("2", 2000),
        ("0.5", 500),
        (".25", 250),
        ("1.", 1000),
        ("0", 0),
        (" 250m ", 250),
        ("0.0001", 1),  # rounds up to a whole millicore
        ("1.5m", 2),
        (2, 2000),
        (0.1, 100),
        (1.5, 1500),
    ],
)
def test_parse_cpu(text: str | int | float, millis: int) -> None:
    assert parse_cpu(text) == millis


@pytest.mark.parametrize(
    "bad", ["", "m", "-1", "1k", "500M", "1Gi", "1e3", "two", "1,5", "1 m", -1, float("nan"), True]
)
def test_parse_cpu_rejects(bad: str | int | float) -> None:
    with pytest.raises(ValueError, match=r"cpu: expected .*'500m'"):
        parse_cpu(bad)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("256Mi", 256 * Mi),
        ("1G", 10**9),
        ("1024", 1024),
        ("1k", 1000),
        ("1Ki", 1024),
        ("2Ti", 2 * 1024**4),
        ("1.5Gi", 3 * Gi // 2),
        ("1P", 10**15),
        ("1Ei", 2**60),
        ("0.5", 1),  # fractions of a byte round up
        (512, 512),
        (1.5e9, 1_500_000_000),
    ],
)
def test_parse_memory(text: str | int | float, size: int) -> None:
    assert parse_memory(text) == size


@pytest.mark.parametrize(
    "bad", ["", "Mi", "1K", "1mi", "1MB", "-5Mi", "1 Gi", "lots", -1, float("inf"), False]
)
def test_parse_memory_rejects(bad: str | int | float) -> None:
    with pytest.raises(ValueError, match=r"memory: expected .*'256Mi'"):
        parse_memory(bad)


def test_parse_memory_milli_hint() -> None:
    with pytest.raises(ValueError, match="did you mean 'M' or 'Mi'"):
        parse_memory("512m")


def test_parse_too_large() -> None:
    with pytest.raises(ValueError, match="too large"):
        parse_memory("9000Ei")
    with pytest.raises(ValueError, match="too large"):
        parse_cpu(1e20)


@pytest.mark.parametrize(
    ("millis", "text"), [(0, "0"), (1000, "1"), (1500, "1500m"), (250, "250m"), (16000, "16")]
)
def test_format_cpu(millis: int, text: str) -> None:
    assert format_cpu(millis) == text
    assert parse_cpu(text) == millis


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0"),
        (512, "512"),
        (1024, "1Ki"),
        (512 * Mi, "512Mi"),
        (2 * Gi, "2Gi"),
        (1536 * Mi, "1536Mi"),
        (1024**4, "1Ti"),
    ],
)
def test_format_memory_exact(size: int, text: str) -> None:
    assert format_memory(size) == text
    assert parse_memory(text) == size


def test_format_memory_rounds_the_inexact() -> None:
    assert format_memory(Gi + 1) == "1.0Gi"
    assert format_memory(3 * Gi // 2 + 7) == "1.5Gi"
    assert format_memory(1500) == "1.5Ki"


@given(st.integers(0, 2**62))
def test_cpu_format_round_trip(millis: int) -> None:
    assert parse_cpu(format_cpu(millis)) == millis
