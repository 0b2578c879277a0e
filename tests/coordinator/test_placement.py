"""Placement as a table: which runner a session goes to, for pack, spread, warm pools,
over-commit, draining, labels, in-flight counting and herd avoidance.

Every row is one decision of the pure `placement.choose`: runners (adverts and how old they
are), the session's demand, the placements in flight, the policy, and which of the best few
the random source picks. Runners are 16 GB / 4 CPUs with 2 GB / 100% sandboxes unless a row
says otherwise; the default policy packs with no over-commit and a single choice, so that a
row's answer is exact.
"""

from __future__ import annotations

import asyncio
import io
import random
import tarfile
from collections import Counter
from dataclasses import dataclass, field, replace

import msgspec
import pytest

from coordinator.errors import ApiError
from coordinator.placement import (
    Decision,
    Demand,
    InFlight,
    Policy,
    Seen,
    choose,
    explain,
    unreflected,
)
from coordinator.placer import Placer
from protocol.agentconf import AgentConfigError, parse_agent_config
from protocol.commands import (
    Accepted,
    AgentRef,
    Command,
    CommandReply,
    CreateSession,
    Rejected,
    SessionOptions,
)
from protocol.errors import ErrorCode, ErrorInfo
from protocol.runners import Resources, RunnerAdvert, SessionActivity, parse_labels

NOW = 1000.0
GB = 1024


def runner(
    rid: str, *, used_mb: int = 0, used_cpu: int = 0, total_mb: int = 16 * GB, cpus: int = 4,
    free_mb: int | None = None, sessions: int = 0, max_sessions: int = 64,
    warm: dict[str, int] | None = None, labels: dict[str, str] | None = None,
    draining: bool = False, protocol: int = 1, age: float = 0.0, sandbox_mb: int = 2 * GB,
    sandbox_cpu: int = 100, capacity: bool = True, held: tuple[str, ...] = (),
) -> Seen:
    """A runner's advert as this coordinator saw it `age` seconds ago. `used_*` is what its
    sandboxes have committed; `capacity=False` is a runner too old to advertise resources."""
    advert = RunnerAdvert(
        runner_id=rid, version="0.1.0", started_at=0.0, sessions=sessions,
        max_sessions=max_sessions, draining=draining, warm=warm or {}, labels=labels or {},
        protocol=protocol, activity={sid: SessionActivity() for sid in held},
        total=Resources(memory_mb=total_mb, cpu_percent=cpus * 100) if capacity else None,
        free=Resources(memory_mb=total_mb - used_mb if free_mb is None else free_mb,
                       cpu_percent=cpus * 100) if capacity else None,
        committed=Resources(memory_mb=used_mb, cpu_percent=used_cpu) if capacity else None,
        sandbox=Resources(memory_mb=sandbox_mb, cpu_percent=sandbox_cpu) if capacity else None,
    )
    return Seen(advert, NOW - age)


def flight(rid: str, *, mb: int = 2 * GB, cpu: int = 100, agent: str = "agent",
           warm: bool = False, sid: str = "s-in-flight") -> InFlight:
    return InFlight(session_id=sid, runner_id=rid, agent=agent, memory_mb=mb, cpu_percent=cpu,
                    warm=warm, placed_at=NOW - 0.5)


class Pick:
    """The random source: picks the `i`-th of the best few (and checks there are that many)."""

    def __init__(self, i: int = 0) -> None:
        self.i = i

    def randrange(self, stop: int, /) -> int:
        assert 0 <= self.i < stop, f"pick {self.i} of {stop}"
        return self.i


EXACT = Policy(mode="pack", memory_overcommit=1.0, cpu_overcommit=1.0, choices=1, ttl_s=4.0)
SPREAD = replace(EXACT, mode="spread")
AGENT = Demand(agent="agent")  # sets no limits: the runner's sandbox default (2 GB, 100%)


@dataclass(frozen=True)
class Case:
    name: str
    runners: list[Seen]
    want: str | None  # the chosen runner; None: no runner can take the session
    demand: Demand = AGENT
    in_flight: tuple[InFlight, ...] = ()
    policy: Policy = EXACT
    pick: int = 0
    exclude: frozenset[str] = frozenset()
    refused: dict[str, str] = field(default_factory=dict)  # runner -> part of its reason


CASES = [
    # -- pack (the default): the fullest runner that still fits ---------------------------------
    Case("pack: the fullest runner that still fits",
         [runner("a", used_mb=4 * GB), runner("b", used_mb=10 * GB), runner("c")], "b"),
    Case("pack: one the sandbox would overflow is passed over for the next fullest",
         [runner("a", used_mb=15 * GB), runner("b", used_mb=8 * GB), runner("c")], "b",
         refused={"a": "needs 2048 MB of memory; 1024 of 16384 MB"}),
    Case("pack: a sandbox that exactly fills a runner fits",
         [runner("a", used_mb=14 * GB), runner("b")], "a"),
    Case("pack: density is the largest share, so a CPU-full runner counts as full",
         [runner("a", used_mb=8 * GB, used_cpu=100), runner("b", used_mb=2 * GB, used_cpu=300)],
         "b"),
    Case("pack: session slots are a share too",
         [runner("a", sessions=1, max_sessions=4, capacity=False),
          runner("b", sessions=2, max_sessions=4, capacity=False)], "b"),
    Case("pack: equal density goes to the fewest free slots",
         [runner("a", used_mb=8 * GB, max_sessions=64), runner("b", used_mb=8 * GB, max_sessions=32)],
         "b"),
    Case("pack: a complete tie goes to the first id",
         [runner("b", used_mb=8 * GB), runner("a", used_mb=8 * GB)], "a"),
    Case("pack: a runner too old to advertise resources is placed by its slots",
         [runner("old", sessions=3, max_sessions=8, capacity=False), runner("new", used_mb=2 * GB)],
         "old"),
    Case("pack: memory a runner could not read (0) is not held against it",
         [runner("a", total_mb=0, free_mb=0, used_mb=4 * GB, used_cpu=200), runner("b")], "a"),
    # -- spread: the emptiest -------------------------------------------------------------------
    Case("spread: the emptiest runner",
         [runner("a", used_mb=4 * GB), runner("b", used_mb=10 * GB), runner("c", used_mb=2 * GB)],
         "c", policy=SPREAD),
    Case("spread: density is the largest share, so a CPU-busy runner is not empty",
         [runner("a", used_mb=2 * GB, used_cpu=300), runner("b", used_mb=6 * GB)], "b",
         policy=SPREAD),
    Case("spread: equal density goes to the most free slots",
         [runner("a", max_sessions=16), runner("victim", max_sessions=200)], "victim",
         policy=SPREAD),
    # -- warm pools: a runner with a warm sandbox of the agent first -------------------------------
    Case("warm: under pack, a warm runner beats a fuller cold one",
         [runner("full", used_mb=12 * GB), runner("warm", used_mb=2 * GB, warm={"agent": 1})],
         "warm"),
    Case("warm: under spread, a warm runner beats an emptier cold one",
         [runner("empty"), runner("warm", used_mb=8 * GB, warm={"agent": 1})], "warm",
         policy=SPREAD),
    Case("warm: a warm sandbox of another agent does not count",
         [runner("a", used_mb=10 * GB, warm={"other": 3}), runner("b", used_mb=12 * GB)], "b"),
    Case("warm: a runner with no room for a new sandbox still serves its warm one",
         [runner("full", used_mb=16 * GB, warm={"agent": 1}), runner("b")], "full"),
    Case("warm: a session with its own options cannot use it, so density decides",
         [runner("warm", used_mb=2 * GB, warm={"agent": 1}), runner("fuller", used_mb=8 * GB)],
         "fuller", demand=replace(AGENT, warm_ok=False)),
    Case("warm: one taken by a placement in flight is not offered twice",
         [runner("warm", used_mb=2 * GB, warm={"agent": 1}), runner("fuller", used_mb=8 * GB)],
         "fuller", in_flight=(flight("warm", mb=0, cpu=0, warm=True),)),
    Case("warm: of two warm sandboxes, one in flight leaves one to take",
         [runner("warm", used_mb=2 * GB, warm={"agent": 2}), runner("fuller", used_mb=8 * GB)],
         "warm", in_flight=(flight("warm", mb=0, cpu=0, warm=True),)),
    # -- over-commit: limits against capacity x ratio, and memory really available ----------------
    Case("over-commit: at ratio 1, limits may not exceed the memory",
         [runner("a", used_mb=15 * GB)], None, refused={"a": "left uncommitted"}),
    Case("over-commit: at ratio 2, twice the memory may be committed",
         [runner("a", used_mb=15 * GB)], "a", policy=replace(EXACT, memory_overcommit=2.0)),
    Case("over-commit: at ratio 2, a runner past twice its memory is full",
         [runner("a", used_mb=31 * GB)], None, policy=replace(EXACT, memory_overcommit=2.0),
         refused={"a": "1024 of 32768 MB (x2) left uncommitted"}),
    Case("over-commit: CPU limits count against the CPUs",
         [runner("a", used_cpu=400), runner("b", used_cpu=300)], "b",
         refused={"a": "needs 100% CPU; 0 of 400% (x1)"}),
    Case("over-commit: CPU over-committed x4 fits four times the cores",
         [runner("a", used_cpu=1500)], "a", policy=replace(EXACT, cpu_overcommit=4.0)),
    Case("over-commit: the memory a sandbox is expected to use must really be available",
         [runner("a", used_mb=2 * GB, free_mb=900), runner("b", used_mb=2 * GB, free_mb=1100)],
         "b", policy=replace(EXACT, memory_overcommit=2.0),
         refused={"a": "has 900 MB of memory available; a 2048 MB sandbox is expected to use 1024"}),
    Case("demand: an agent that sets no limit takes the runner's default, per runner",
         [runner("big", used_mb=13 * GB, sandbox_mb=4 * GB), runner("small", used_mb=13 * GB,
                                                                     sandbox_mb=1 * GB)],
         "small", refused={"big": "needs 4096 MB"}),
    Case("demand: an agent's limit is clamped by the runner's cap",
         [runner("a", used_mb=15 * GB, sandbox_mb=1 * GB)], "a",
         demand=replace(AGENT, memory_mb=8 * GB)),
    Case("demand: an agent may ask for less than the default",
         [runner("a", used_mb=15 * GB + 512)], "a", demand=replace(AGENT, memory_mb=512)),
    # -- who is never chosen ----------------------------------------------------------------------
    Case("draining: never chosen, however well it would fit",
         [runner("draining", used_mb=10 * GB, draining=True, warm={"agent": 2}),
          runner("b", used_mb=2 * GB)], "b"),
    Case("draining: when every runner drains, none",
         [runner("a", draining=True), runner("b", draining=True)], None,
         refused={"a": "draining", "b": "draining"}),
    Case("labels: a runner without a required label is never chosen",
         [runner("a", used_mb=10 * GB, warm={"agent": 1}), runner("b", labels={"zone": "b"})], "b",
         demand=replace(AGENT, labels={"zone": "b"}), refused={"a": "lacks label zone=b"}),
    Case("labels: a different value is a mismatch",
         [runner("a", labels={"zone": "a"})], None, demand=replace(AGENT, labels={"zone": "b"}),
         refused={"a": "lacks label zone=b"}),
    Case("labels: every required label must be there",
         [runner("a", labels={"zone": "a"}), runner("b", labels={"zone": "a", "gpu": "yes"})],
         "b", demand=replace(AGENT, labels={"zone": "a", "gpu": "yes"})),
    Case("labels: a runner may carry labels the agent does not ask for",
         [runner("a", labels={"zone": "a", "gpu": "no"})], "a"),
    Case("version: a runner speaking another protocol is skipped",
         [runner("next", used_mb=10 * GB, protocol=2), runner("b")], "b",
         refused={"next": "speaks protocol 2"}),
    Case("stale: an advert older than the TTL is skipped",
         [runner("stale", used_mb=10 * GB, age=5.0), runner("b", age=3.9)], "b",
         refused={"stale": "silent for 5 s"}),
    Case("slots: a runner with every slot taken is skipped",
         [runner("a", used_mb=10 * GB, sessions=8, max_sessions=8), runner("b")], "b",
         refused={"a": "all 8 session slots"}),
    Case("busy: a runner that refused this session is skipped for the next",
         [runner("busy", used_mb=10 * GB), runner("b")], "b", exclude=frozenset({"busy"})),
    Case("busy: when every runner refused, none",
         [runner("a")], None, exclude=frozenset({"a"}), refused={"a": "refused it already"}),
    Case("no runner at all: none", [], None),
    # -- placements in flight: counted until an advert shows them --------------------------------
    Case("in flight: they count against the runner's memory",
         [runner("a", used_mb=12 * GB), runner("b", used_mb=8 * GB)], "b",
         in_flight=(flight("a"), flight("a", sid="s2")), refused={"a": "needs 2048 MB"}),
    Case("in flight: they count against its CPU",
         [runner("a", used_cpu=300), runner("b")], "b", in_flight=(flight("a", mb=0),)),
    Case("in flight: they take session slots",
         [runner("a", sessions=3, max_sessions=4), runner("b")], "b", in_flight=(flight("a"),),
         refused={"a": "all 4 session slots"}),
    Case("in flight: under spread, they make the runner look as full as it will be",
         [runner("a"), runner("b", used_mb=2 * GB)], "b", policy=SPREAD,
         in_flight=(flight("a"), flight("a", sid="s2"))),
    Case("in flight: under pack, they make the runner look fuller",
         [runner("a", used_mb=4 * GB), runner("b", used_mb=6 * GB)], "a",
         in_flight=(flight("a"), flight("a", sid="s2"))),
    Case("in flight: placements on other runners do not count here",
         [runner("a", used_mb=14 * GB)], "a", in_flight=(flight("b"), flight("c"))),
    # -- herd avoidance: one of the best few, at random ------------------------------------------
    Case("herd: pick 0 of the best two is the best",
         [runner("a", used_mb=2 * GB), runner("b", used_mb=8 * GB), runner("c", used_mb=4 * GB)],
         "b", policy=replace(EXACT, choices=2), pick=0),
    Case("herd: pick 1 of the best two is the second best",
         [runner("a", used_mb=2 * GB), runner("b", used_mb=8 * GB), runner("c", used_mb=4 * GB)],
         "c", policy=replace(EXACT, choices=2), pick=1),
    Case("herd: with one feasible runner there is one choice",
         [runner("a"), runner("b", draining=True)], "a", policy=replace(EXACT, choices=3)),
    Case("herd: the best few stay within the warm tier",
         [runner("w", warm={"agent": 1}), runner("c1", used_mb=8 * GB), runner("c2")], "w",
         policy=replace(EXACT, choices=3)),
    Case("herd: spread picks among the emptiest",
         [runner("a", used_mb=2 * GB), runner("b", used_mb=8 * GB), runner("c", used_mb=4 * GB)],
         "c", policy=replace(SPREAD, choices=2), pick=1),
]


def decide(case: Case) -> Decision:
    return choose(case.demand, case.runners, case.in_flight, NOW, Pick(case.pick), case.policy,
                  case.exclude)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_placement(case: Case) -> None:
    decision = decide(case)
    got = decision.runner.runner_id if decision.runner is not None else None
    assert got == case.want, f"ranked {decision.ranked}, refused {dict(decision.refused)}"
    for rid, why in case.refused.items():
        assert why in decision.refused.get(rid, ""), decision.refused


def test_the_table_covers_what_placement_promises() -> None:
    topics = {c.name.split(":")[0] for c in CASES}
    assert {"pack", "spread", "warm", "over-commit", "draining", "in flight", "herd"} <= topics
    assert len({c.name for c in CASES}) == len(CASES), "two rows share a name"


def test_a_session_on_a_warm_sandbox_adds_no_commitment_and_a_cold_one_its_limits() -> None:
    warm = choose(AGENT, [runner("w", warm={"agent": 1})], (), NOW, Pick(), EXACT).chosen
    cold = choose(replace(AGENT, memory_mb=512, cpu_percent=50), [runner("c")], (), NOW, Pick(),
                  EXACT).chosen
    assert warm is not None and (warm.warm, warm.memory_mb, warm.cpu_percent) == (True, 0, 0)
    assert cold is not None and (cold.warm, cold.memory_mb, cold.cpu_percent) == (False, 512, 50)


def test_many_coordinators_with_one_view_spread_a_burst_over_the_best_few() -> None:
    # Ten coordinators see the same adverts and have nothing in flight: a deterministic choice
    # would send all 200 sessions to "a". With two choices they split between a and b, and the
    # third runner is never used while two better ones fit.
    view = [runner("a", used_mb=8 * GB), runner("b", used_mb=6 * GB), runner("c", used_mb=2 * GB)]
    policy = replace(EXACT, choices=2)
    coordinators = [random.Random(seed) for seed in range(10)]
    chosen = Counter(
        choose(AGENT, view, (), NOW, rng, policy).runner.runner_id  # type: ignore[union-attr]
        for rng in coordinators for _ in range(20)
    )
    assert set(chosen) == {"a", "b"} and min(chosen.values()) >= 60, chosen


def test_one_coordinator_packs_a_burst_runner_by_runner_through_its_in_flight_count() -> None:
    # Nothing shows in the adverts yet: only the in-flight count stops the burst at a's room.
    view = [runner("a", used_mb=10 * GB), runner("b", used_mb=2 * GB)]
    policy = replace(EXACT, cpu_overcommit=4.0)  # memory is what runs out
    flights: list[InFlight] = []
    while (c := choose(AGENT, view, flights, NOW, Pick(), policy).chosen) is not None:
        flights.append(flight(c.advert.runner_id, mb=c.memory_mb, cpu=c.cpu_percent,
                              sid=f"s{len(flights)}"))
        assert len(flights) < 100
    assert [f.runner_id for f in flights] == ["a"] * 3 + ["b"] * 7


# -- in flight until an advert shows it ------------------------------------------------------------

ACCEPTED = NOW - 1.0


@dataclass(frozen=True)
class FlightCase:
    name: str
    flight: InFlight
    runners: list[Seen]
    kept: bool


FLIGHTS = [
    FlightCase("not yet answered: counted, however long",
               replace(flight("a", sid="x"), placed_at=NOW - 60), [runner("a")], True),
    FlightCase("accepted, not in the advert yet: counted",
               replace(flight("a", sid="x"), accepted_at=ACCEPTED), [runner("a")], True),
    FlightCase("accepted and in the advert: the advert counts it now",
               replace(flight("a", sid="x"), accepted_at=ACCEPTED), [runner("a", held=("x",))],
               False),
    FlightCase("accepted longer than the TTL ago and never shown: forgotten",
               replace(flight("a", sid="x"), accepted_at=NOW - 4.5), [runner("a")], False),
    FlightCase("accepted on a runner no longer seen: counted until the TTL",
               replace(flight("gone", sid="x"), accepted_at=ACCEPTED), [runner("a")], True),
    FlightCase("a runner too old to list sessions: an advert after the acceptance shows it",
               replace(flight("a", sid="x"), accepted_at=ACCEPTED),
               [Seen(msgspec.structs.replace(runner("a").advert, activity=None), ACCEPTED + 0.1)], False),
    FlightCase("a runner too old to list sessions: an advert from before does not",
               replace(flight("a", sid="x"), accepted_at=ACCEPTED),
               [Seen(msgspec.structs.replace(runner("a").advert, activity=None), ACCEPTED - 0.1)], True),
]


@pytest.mark.parametrize("case", FLIGHTS, ids=[c.name for c in FLIGHTS])
def test_in_flight_until_an_advert_shows_it(case: FlightCase) -> None:
    by_id = {s.advert.runner_id: s for s in case.runners}
    assert (unreflected([case.flight], by_id, NOW, 4.0) == [case.flight]) is case.kept


# -- the 503, settings and ash.toml -------------------------------------------------------------


def test_no_feasible_runner_says_why_each_runner_cannot_take_the_session() -> None:
    demand = Demand(agent="gpu-agent", labels={"gpu": "yes"})
    decision = choose(demand, [runner("a", draining=True), runner("b")], (), NOW, Pick(), EXACT)
    assert decision.runner is None
    assert explain(demand, decision) == (
        "no runner can take a session of agent 'gpu-agent' (labels gpu=yes): "
        "a: draining; b: lacks label gpu=yes")
    empty = choose(demand, [], (), NOW, Pick(), EXACT)
    assert "no runner is registered" in explain(demand, empty)


def test_runner_labels_parse_from_the_setting() -> None:
    assert parse_labels("zone=a, gpu=no,") == {"zone": "a", "gpu": "no"}
    assert parse_labels("") == {}
    for bad in ("zone", "zone=a b", "zone=a,zone=b", "=a"):
        with pytest.raises(ValueError):
            parse_labels(bad)


def test_ash_toml_placement_labels_are_validated() -> None:
    config = parse_agent_config('[placement]\nlabels = { zone = "a", gpu = "no" }\n')
    assert config.placement.labels == {"zone": "a", "gpu": "no"}
    assert parse_agent_config("").placement.labels == {}
    with pytest.raises(AgentConfigError, match=r"\[placement\] labels\[...\]: .*a label"):
        parse_agent_config('[placement]\nlabels = { zone = "a b" }\n')
    with pytest.raises(AgentConfigError, match="unknown key `label` in \\[placement\\]"):
        parse_agent_config('[placement]\nlabel = { zone = "a" }\n')


# -- the placer: busy runners skipped, in flight counted, 503 ------------------------------------


def bundle(ash_toml: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in {"CLAUDE.md": "hi\n", "ash.toml": ash_toml}.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    return buf.getvalue()


@dataclass
class Stored:
    data: bytes | None


@dataclass
class Bundles:
    """The bundle object store: one agent version."""

    data: bytes
    gets: int = 0

    async def get(self, name: str) -> Stored:
        self.gets += 1
        return Stored(self.data)


@dataclass
class Directory:
    seen: list[Seen]

    def snapshot(self) -> list[Seen]:
        return list(self.seen)


@dataclass
class Runners:
    """The bus: runners in `busy` refuse (retryable), the others accept once `gate` opens."""

    busy: set[str] = field(default_factory=set)
    asked: list[str] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)

    async def request(self, runner_id: str, command: Command, timeout_s: float) -> CommandReply:
        self.asked.append(runner_id)
        if runner_id in self.busy:
            return Rejected(runner_id=runner_id, error=ErrorInfo(
                code=ErrorCode.runner_busy, message=f"{runner_id} is busy", retryable=True))
        await self.gate.wait()
        return Accepted(runner_id=runner_id)


def create(sid: str, **options: str) -> CreateSession:
    return CreateSession(session_id=sid, agent=AgentRef(name="agent", digest="d1"),
                         options=SessionOptions(**options))  # type: ignore[arg-type]


def placer(seen: list[Seen], bus: Runners, ash_toml: str = "") -> tuple[Placer, Bundles]:
    store = Bundles(bundle(ash_toml))
    clock = iter(NOW + i / 1000 for i in range(10_000))
    return Placer(Directory(seen), bus, store, EXACT, 5.0, Pick(),  # type: ignore[arg-type]
                  clock=lambda: next(clock)), store


async def test_the_placer_skips_a_busy_runner_for_the_next_and_counts_what_is_in_flight() -> None:
    bus = Runners(busy={"a"})
    bus.gate.set()
    p, store = placer([runner("a", used_mb=8 * GB), runner("b")], bus,
                      '[limits]\nmemory_mb = 1024\n[placement]\nlabels = { zone = "x" }\n')
    with pytest.raises(ApiError) as refused:
        await p.place(create("s1"))
    assert refused.value.status == 503 and "lacks label zone=x" in refused.value.info.message
    assert bus.asked == []

    labelled = [runner("a", used_mb=8 * GB, labels={"zone": "x"}),
                runner("b", labels={"zone": "x"})]
    p, store = placer(labelled, bus, '[limits]\nmemory_mb = 1024\n[placement]\nlabels = { zone = "x" }\n')
    reply = await p.place(create("s1"))
    assert reply.runner_id == "b" and bus.asked == ["a", "b"]  # a (fullest) was busy
    assert [(f.runner_id, f.memory_mb, f.accepted_at is not None) for f in p.in_flight()] == \
        [("b", 1024, True)]
    await p.place(create("s2"))
    assert store.gets == 1  # the agent's demand is read once per version


async def test_concurrent_creates_see_each_other_in_flight_before_any_advert() -> None:
    bus = Runners()
    p, _ = placer([runner("a", used_mb=12 * GB), runner("b")], bus)  # a has room for two
    creates = [asyncio.ensure_future(p.place(create(f"s{i}"))) for i in range(3)]
    async with asyncio.timeout(10):
        while len(bus.asked) < 3:  # each create reaches its runner; all wait on the gate
            await asyncio.sleep(0)
    assert bus.asked == ["a", "a", "b"]
    assert len(p.in_flight()) == 3
    bus.gate.set()
    assert sorted(r.runner_id for r in await asyncio.gather(*creates)) == ["a", "a", "b"]


async def test_a_session_with_its_own_options_is_not_sent_for_a_warm_sandbox() -> None:
    bus = Runners()
    bus.gate.set()
    seen = [runner("warm", warm={"agent": 1}), runner("fuller", used_mb=8 * GB)]
    p, _ = placer(seen, bus)
    assert (await p.place(create("s1", model="claude-x"))).runner_id == "fuller"
    assert (await p.place(create("s2"))).runner_id == "warm"
