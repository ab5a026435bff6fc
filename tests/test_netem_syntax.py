"""netem's words (moa_bus/cli/netem_syntax.py): parse and render are each other's inverse for
every valid emulation, netem's documented examples read as tc reads them, and every word moa
does not implement is refused naming it, by the `moa set` command too, with nothing sent."""
from __future__ import annotations

import json
import os

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import schemas
from moa_bus.cli import netem_syntax as netem
from moa_bus.cli import set as set_verb
from moa_bus.cli import show
from schemas.messages import (
    AQM_MAX_NS, AQM_MIN_NS, CELL_OVERHEAD_MAX, CELL_SIZE_MAX, MIN_CAPACITY_BPS, MIN_QUEUE_BYTES,
    OVERHEAD_MAX, OVERHEAD_MIN, SLOT_GAP_MAX_NS, SLOT_LIMIT_MAX,
)
from schemas.units import MAX_DURATION_NS, MAX_RATE_BPS, MAX_SIZE_BYTES
from tests.fixtures.processes import run_moa


NO_CELLS = {"overhead": 24, "cell_size": 0, "cell_overhead": 0}  # what `rate` alone sets


def applied(words: str | list[str], base: schemas.Emulation | None = None) -> schemas.Emulation:
    """The emulation the words make of `base` (default: every field at its default)."""
    patch = netem.parse(words.split() if isinstance(words, str) else words)
    decoded = schemas.decode(schemas.EmulationPatch, json.dumps(patch))
    return decoded.apply(base or schemas.Emulation())


probabilities = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
below_one = st.floats(min_value=0.0, max_value=1.0, exclude_max=True, allow_nan=False)


dist_tables = st.lists(st.integers(-32768, 32767), min_size=2, max_size=50).map(tuple)
slot_limits = st.one_of(st.just(0), st.integers(1, SLOT_LIMIT_MAX))


@st.composite
def slots(draw) -> schemas.Slot | None:
    """None, or any slot the rules accept (schemas.messages.check_slot)."""
    form = draw(st.sampled_from(("none", "uniform", "normal", "pareto", "paretonormal")))
    if form == "none":
        return None
    if form == "uniform":
        lo = draw(st.integers(0, SLOT_GAP_MAX_NS))
        hi = draw(st.one_of(st.none(), st.integers(max(lo, 1), SLOT_GAP_MAX_NS)))
        if lo == 0 and hi is None:
            hi = 1
        return schemas.Slot(min=lo, max=hi, packets=draw(slot_limits), bytes=draw(slot_limits))
    return schemas.Slot(distribution=form, delay=draw(st.integers(0, SLOT_GAP_MAX_NS)),
                        jitter=draw(st.integers(1, SLOT_GAP_MAX_NS)), packets=draw(slot_limits),
                        bytes=draw(slot_limits))


@st.composite
def emulations(draw) -> schemas.Emulation:
    """Any emulation the rules accept (schemas.messages.check_emulation)."""
    latency = draw(st.integers(0, MAX_DURATION_NS))
    capacity = draw(st.one_of(st.just(0), st.integers(MIN_CAPACITY_BPS, MAX_RATE_BPS)))
    burst = draw(st.one_of(st.none(), st.builds(
        schemas.GilbertElliott, p=probabilities, r=probabilities, loss_good=probabilities,
        loss_bad=probabilities)))
    aqm_time = st.one_of(st.none(), st.integers(AQM_MIN_NS, AQM_MAX_NS))
    kind = draw(st.sampled_from(("taildrop", "codel", "pie") if capacity else ("taildrop",)))
    aqm = schemas.Aqm() if kind == "taildrop" else schemas.Aqm(
        kind=kind, target=draw(aqm_time), interval=draw(aqm_time), ecn=draw(st.booleans()))
    e = schemas.Emulation(
        latency=latency, jitter=draw(st.integers(0, latency)),
        distribution=(name := draw(st.sampled_from(
            ("uniform", "normal", "pareto", "paretonormal", "custom")))),
        distribution_table=draw(dist_tables) if name == "custom" else None,
        delay_correlation=draw(below_one),
        loss=0.0 if burst else draw(probabilities),
        loss_correlation=0.0 if burst else draw(below_one),
        burst=burst, capacity=capacity,
        queue=draw(st.one_of(st.none(), st.integers(MIN_QUEUE_BYTES, MAX_SIZE_BYTES)))
        if capacity else None,
        aqm=aqm, reorder=draw(st.booleans()), state=draw(st.sampled_from(("up", "down"))),
        overhead=draw(st.one_of(st.just(24), st.integers(OVERHEAD_MIN, OVERHEAD_MAX))),
        cell_size=(cell := draw(st.one_of(st.just(0), st.integers(1, CELL_SIZE_MAX)))),
        cell_overhead=draw(st.integers(1 - cell, CELL_OVERHEAD_MAX)) if cell else 0,
        corrupt=draw(probabilities),
        reorder_early=draw(st.builds(schemas.ReorderEarly, probability=probabilities,
                                     correlation=below_one,
                                     gap=st.one_of(st.just(1), st.integers(1, 2**31))))
        if latency and draw(st.booleans()) else None,
        duplicate=(dup := draw(probabilities)),
        duplicate_correlation=draw(below_one) if dup else 0.0, slot=draw(slots()))
    schemas.check_emulation(e, "")
    return e


@settings(max_examples=400, deadline=None)
@given(emulations())
def test_parse_gives_back_what_render_wrote(e: schemas.Emulation) -> None:
    words = netem.render(e)
    if e == schemas.Emulation():
        assert words == ""
        return
    if e.distribution == "custom":  # `distribution custom`: the table is the link's (kept)
        assert " distribution custom" in words
        with_table = schemas.Emulation(distribution="custom", latency=1,
                                       distribution_table=e.distribution_table)
        assert applied(words, with_table) == e, words
    else:
        assert applied(words) == e, words
    # the words set every field they name: on a link that already is e they change nothing
    assert applied(words, e) == e


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(
    st.sampled_from(["delay", "latency", "distribution", "loss", "drop", "random", "gemodel",
                     "state", "rate", "moa", "queue", "aqm", "codel", "ecn", "duplicate", "corrupt",
                     "reorder", "limit", "normal", "10ms", "1ms", "5%", "0.5", "100%", "1e-3%",
                     "10mbit", "1mbps", "-14", "20", "64KiB", "true", "down", "inherit",
                     "slot", "packets", "bytes", "pareto", "4", "0ms"]),
    st.text(max_size=12)), max_size=10))
def test_any_words_are_taken_or_refused_naming_a_word(words: list[str]) -> None:
    """Whatever the words: a patch the emulation's rules accept, or NetemError with the word."""
    try:
        patch = netem.parse(words)
    except netem.NetemError as e:  # the word, quoted or as the message's subject
        assert repr(e.word) in str(e) or (e.word and e.word in str(e)), (e.word, str(e))
        return
    schemas.check_emulation(schemas.decode(schemas.EmulationPatch, json.dumps(patch)), "")


def test_netems_examples_read_as_tc_reads_them() -> None:
    """tc-netem(8)'s and the issue's lines, the parts moa implements."""
    assert netem.parse("delay 100ms 20ms distribution normal loss 1% 25%".split()) == {
        "latency": 100_000_000, "jitter": 20_000_000, "delay_correlation": 0.0,
        "distribution": "normal", "distribution_table": None, "loss": 0.01,
        "loss_correlation": 0.25, "burst": None}
    assert netem.parse("delay 10ms 3ms 25%".split()) == {
        "latency": 10_000_000, "jitter": 3_000_000, "delay_correlation": 0.25,
        "distribution": "uniform", "distribution_table": None}
    # tc's other names, `random`, a percentage without its %, tc's time units
    assert netem.parse("latency 1.5msec drop random 0.3".split()) == {
        "latency": 1_500_000, "jitter": 0, "delay_correlation": 0.0, "distribution": "uniform",
        "distribution_table": None, "loss": 0.003, "loss_correlation": 0.0, "burst": None}
    assert netem.parse(["rate", "5kbit"]) == {"capacity": 5_000, **NO_CELLS}
    assert netem.parse(["rate", "1.5Mbit"]) == {"capacity": 1_500_000, **NO_CELLS}
    assert netem.parse(["rate", "1kibit"]) == {"capacity": 1_024, **NO_CELLS}
    # packetoverhead, cellsize, celloverhead: tc-netem(8)'s ATM example and a stripped header
    assert netem.parse("rate 256kbit 20 48 5".split()) == {
        "capacity": 256_000, "overhead": 20, "cell_size": 48, "cell_overhead": 5}
    assert netem.parse("rate 100kbit -14".split()) == {
        "capacity": 100_000, "overhead": -14, "cell_size": 0, "cell_overhead": 0}
    assert netem.parse("rate 1mbit 0 53".split())["cell_size"] == 53
    assert netem.parse("corrupt 0.1%".split()) == {"corrupt": 0.001}
    assert netem.parse("corrupt 5% 0%".split()) == {"corrupt": 0.05}
    assert netem.parse("delay 100ms 20ms distribution normal loss 1% 25% corrupt 0.1%".split())[
        "corrupt"] == 0.001
    assert netem.parse(["delay", "250usecs"])["latency"] == 250_000
    # Gilbert-Elliott: p, r, 1-h (loss while bad), 1-k (loss while good)
    assert netem.parse("loss gemodel 1% 10% 70% 0.1%".split())["burst"] == {
        "p": 0.01, "r": 0.1, "loss_bad": 0.7, "loss_good": 0.001}
    # tc's defaults for those left out: r = 1 - p, 1-h = 100 %, 1-k = 0 %
    assert netem.parse("loss gemodel 5%".split()) == {
        "loss": 0.0, "loss_correlation": 0.0,
        "burst": {"p": 0.05, "r": 0.95, "loss_bad": 1.0, "loss_good": 0.0}}
    assert netem.parse("loss gemodel 5% 20%".split())["burst"] == {
        "p": 0.05, "r": 0.2, "loss_bad": 1.0, "loss_good": 0.0}
    # moa's own keys after `moa`
    assert netem.parse("rate 20mbit moa queue 256KiB aqm codel target 5ms ecn on reorder true "
                       "state down".split()) == {
        "capacity": 20_000_000, **NO_CELLS, "queue": 262_144, "reorder": True, "state": "down",
        "aqm": {"kind": "codel", "target": 5_000_000, "ecn": True}}


def test_a_group_replaces_its_fields_and_leaves_the_others() -> None:
    base = schemas.Emulation(latency=50_000_000, jitter=10_000_000, distribution="pareto",
                             delay_correlation=0.5, loss=0.1, loss_correlation=0.2,
                             capacity=10_000_000)
    # delay without jitter, correlation or distribution: those are netem's defaults again
    assert applied("delay 20ms", base) == schemas.Emulation(
        latency=20_000_000, loss=0.1, loss_correlation=0.2, capacity=10_000_000)
    # the loss model switches: Bernoulli's fields go to 0 with gemodel, burst goes with loss
    ge = applied("loss gemodel 1% 30%", base)
    assert (ge.loss, ge.loss_correlation, ge.burst) == (
        0.0, 0.0, schemas.GilbertElliott(p=0.01, r=0.3))
    assert applied("loss 2%", ge).burst is None and applied("loss 2%", ge).loss == 0.02
    assert applied("rate 0bit", schemas.Emulation(capacity=1_000_000)).capacity == 0
    # rate names the frames' charge too: left out, moa's default (24, no cells)
    cells = schemas.Emulation(capacity=1_000_000, overhead=10, cell_size=48, cell_overhead=5)
    assert applied("rate 2mbit", cells) == schemas.Emulation(capacity=2_000_000)
    assert applied("rate 2mbit 8", cells) == schemas.Emulation(capacity=2_000_000, overhead=8)
    assert applied("delay 1ms", cells) == msgspec.structs.replace(cells, latency=1_000_000)


def test_slot_words() -> None:
    """tc's two forms of `slot`, and what moa writes back for them."""
    ms = 1_000_000
    assert netem.parse("slot 800us 1ms packets 4".split()) == {
        "slot": {"min": 800_000, "max": ms, "packets": 4}}
    assert applied("slot 2ms bytes 3000").slot == schemas.Slot(min=2 * ms, bytes=3000)
    assert applied("delay 10ms slot distribution pareto 5ms 1ms packets 8 bytes 9000") == (
        schemas.Emulation(latency=10 * ms, slot=schemas.Slot(
            distribution="pareto", delay=5 * ms, jitter=ms, packets=8, bytes=9000)))
    assert netem.render(schemas.Emulation(slot=schemas.Slot(min=ms, max=3 * ms, packets=4))) == (
        "slot 1ms 3ms packets 4")
    assert netem.render(schemas.Emulation(slot=schemas.Slot(
        distribution="normal", delay=10 * ms, jitter=2 * ms, bytes=1500))) == (
        "slot distribution normal 10ms 2ms bytes 1500")
    # a group of its own: the words replace the whole slot and nothing else
    e = applied("slot 1ms packets 4", schemas.Emulation(loss=0.1, slot=schemas.Slot(
        min=5 * ms, bytes=100)))
    assert e == schemas.Emulation(loss=0.1, slot=schemas.Slot(min=ms, packets=4))


def test_render_writes_netems_words() -> None:
    e = schemas.Emulation(latency=100_000_000, jitter=20_000_000, distribution="normal",
                          loss=0.01, loss_correlation=0.25, capacity=10_000_000)
    assert netem.render(e) == "delay 100ms 20ms distribution normal loss 1% 25% rate 10mbit"
    assert netem.render(schemas.Emulation(burst=schemas.GilbertElliott(
        p=0.01, r=0.1, loss_bad=0.7, loss_good=0.001))) == "loss gemodel 1% 10% 70% 0.1%"
    assert netem.render(schemas.Emulation(burst=schemas.GilbertElliott(p=0.01, r=0.1))) == (
        "loss gemodel 1% 10%")
    assert netem.render(schemas.Emulation(latency=5_000_000, delay_correlation=0.5)) == (
        "delay 5ms 0ns 50%")
    assert netem.render(schemas.Emulation(loss=5e-324)) == "loss 5e-322%"
    assert netem.render(schemas.Emulation(
        capacity=1_500, queue=1_536, aqm=schemas.Aqm(kind="pie", interval=30_000_000),
        reorder=True, state="down")) == (
        "rate 1.5kbit moa queue 1.5KiB aqm pie interval 30ms reorder true state down")
    assert netem.render(schemas.Emulation(capacity=256_000, overhead=20, cell_size=48,
                                          cell_overhead=5)) == "rate 256kbit 20 48 5"
    assert netem.render(schemas.Emulation(capacity=10**6, overhead=0)) == "rate 1mbit 0"
    assert netem.render(schemas.Emulation(overhead=-14)) == "rate 0bit -14"  # unlimited
    assert netem.render(schemas.Emulation(loss=0.01, corrupt=0.001)) == "loss 1% corrupt 0.1%"
    assert netem.render(schemas.Emulation()) == ""


def test_reorder_gap_and_duplicate_read_as_tc_reads_them() -> None:
    """tc-netem(8)'s reorder lines and the issue's duplicate; the gap may come anywhere."""
    assert netem.parse("delay 10ms reorder 25% 50%".split())["reorder_early"] == {
        "probability": 0.25, "correlation": 0.5, "gap": 1}
    assert netem.parse("gap 5 delay 10ms reorder 25%".split())["reorder_early"] == {
        "probability": 0.25, "correlation": 0.0, "gap": 5}
    assert netem.parse("delay 100ms 20ms distribution normal loss 1% 25% duplicate 1%".split(
    ))["duplicate"] == 0.01
    assert netem.parse("duplicate 1% 30".split()) == {"duplicate": 0.01,
                                                      "duplicate_correlation": 0.3}
    assert netem.render(schemas.Emulation(
        latency=10**7, reorder_early=schemas.ReorderEarly(probability=0.25, correlation=0.5,
                                                          gap=5), duplicate=0.01)) == (
        "delay 10ms reorder 25% 50% gap 5 duplicate 1%")


@pytest.mark.parametrize(("words", "word"), [
    ("duplicate 101%", "duplicate"),
    ("duplicate 1% 100%", "duplicate"),      # moa's correlation is below 1
    ("duplicate", "duplicate"),
    ("duplicate 1% duplicate 2%", "duplicate"),
    ("moa duplicate 0.1", "duplicate"),
    ("delay 0ms reorder 25%", "reorder"),    # no delay to skip (tc refuses it too)
    ("delay 10ms reorder 25% 100%", "reorder"),
    ("delay 10ms reorder 25% gap 0", "gap"),
    ("delay 10ms reorder 25% gap -1", "gap"),
    ("delay 10ms reorder 25% gap 4294967295", "gap"),
    ("delay 10ms reorder 1% gap 2 gap 3", "gap"),
    ("corrupt 0.1% 25%", "corrupt"),          # a correlation: refused
    ("corrupt 101%", "corrupt"),
    ("corrupt", "corrupt"),
    ("corrupt 1% corrupt 2%", "corrupt"),
    ("moa corrupt 0.1", "corrupt"),
    ("gap 5", "gap"),
    ("delay 10ms gap 5", "gap"),
    ("slot", "slot"),
    ("slot 800", "slot"),                      # a bare number: tc's ns, refused
    ("slot 2ms 1ms", "slot"),                  # max below min
    ("slot 0ms", "slot"),                      # no gap: netem's `slot 0` is no slots
    ("slot 5s", "slot"),
    ("slot 1ms packets", "slot"),
    ("slot 1ms packets -1", "slot"),
    ("slot 1ms packets 4x", "slot"),
    ("slot 1ms bytes 2147483648", "slot"),
    ("slot 1ms bytes 1500 packets 4", "packets"),  # tc's order: packets, then bytes
    ("slot distribution normal 1ms", "slot"),
    ("slot distribution normal 1ms 0ms", "slot"),  # tc: non-positive jitter
    ("slot distribution experimental 1ms 1ms", "slot"),
    ("slot distribution uniform 1ms 1ms", "slot"),
    ("slot often", "slot"),
    ("slot 1ms slot 2ms", "slot"),
    ("moa slot 1ms", "slot"),
    ("loss 1% ecn", "ecn"),
    ("limit 1000", "limit"),
    ("seed 42", "seed"),
    ("rate 5kbit 0x14", "packetoverhead"),
    ("rate 5kbit 20 48.5", "cellsize"),
    ("rate 5kbit 20 48 5.5", "celloverhead"),
    ("rate 5kbit -61", "rate"),              # overhead below -60 (a 60-byte frame charged < 0)
    ("rate 5kbit 4097", "rate"),
    ("rate 5kbit 20 4097", "rate"),
    ("rate 5kbit 20 0 5", "rate"),           # a cell overhead without cells
    ("rate 5kbit 20 48 -48", "rate"),        # a cell of 0 bytes
    ("rate 10%", "rate"),
    ("rate 1mbps", "rate"),
    ("rate 100", "rate"),
    ("delay 100", "delay"),
    ("delay 1.5ns", "delay"),
    ("delay 2h", "delay"),
    ("delay 10ms 20ms", "delay"),  # jitter beyond latency: moa's rule, netem clamps at 0
    ("delay 10ms 1ms 100%", "delay"),  # moa's correlation is below 1
    ("delay 10ms 1ms distribution experimental", "distribution"),  # no reader: parse is pure
    ("delay 10ms 1ms distribution /tmp/x.dist", "distribution"),
    ("distribution normal", "distribution"),
    ("loss state 1% 2%", "state"),
    ("loss 101%", "loss"),
    ("loss 1% 100%", "loss"),
    ("loss -1%", "-1%"),
    ("loss bogus", "bogus"),
    ("loss", "loss"),
    ("delay", "delay"),
    ("rate 500bit", "rate"),
    ("delay 10ms delay 20ms", "delay"),
    ("loss 1% drop 2%", "drop"),
    ("dealy 10ms", "dealy"),
    ("moa latency 10ms", "latency"),
    ("moa colour blue", "colour"),
    ("moa queue 10", "queue"),
    ("moa queue inherit", "queue"),
    ("moa aqm fq_codel", "aqm"),
    ("moa ecn true", "moa aqm"),  # ecn needs an AQM
    ("moa state off", "state"),
    ("moa reorder maybe", "reorder"),
    ("moa queue", "queue"),
    ("moa queue 64KiB queue 64KiB", "queue"),
])
def test_refusals_name_the_word(words: str, word: str) -> None:
    with pytest.raises(netem.NetemError) as e:
        netem.parse(words.split())
    assert e.value.word == word
    assert word.split()[-1] in str(e.value)


def test_refusing_an_unsupported_word_says_so() -> None:
    with pytest.raises(netem.NetemError, match="netem word 'seed' is not supported by moa"):
        netem.parse("delay 100ms 20ms seed 42".split())
    with pytest.raises(netem.NetemError, match="give netem's words"):
        netem.parse([])


def test_set_takes_netems_words_or_pairs() -> None:
    assert set_verb.parse_words(["netem", "loss", "1%", "25%"]) == (
        {"loss": 0.01, "loss_correlation": 0.25, "burst": None}, [])
    assert set_verb.parse_words(["loss", "0.01", "capacity", "inherit"]) == (
        {"loss": 0.01}, ["capacity"])
    assert set_verb.parse_words(["overhead", "-14", "cell_size", "48", "cell_overhead", "5"]) == (
        {"overhead": -14, "cell_size": 48, "cell_overhead": 5}, [])
    with pytest.raises(set_verb.UsageError, match="cell_size '48B' is not a whole number"):
        set_verb.parse_words(["cell_size", "48B"])
    # moa show's capacity column names a charge that is not the default
    assert show._emulation(schemas.Emulation(capacity=10**6, overhead=0, cell_size=48,
                                             cell_overhead=5))[-1] == "1mbps oh 0 cells 48+5"


def test_show_netem_prints_a_line_per_row() -> None:
    up = schemas.Emulation(capacity=2_000_000, loss=0.25)
    status = schemas.StatusReply(host="h", fq_memory_bytes=0, materializations=[
        schemas.MaterializationStatus(id="m", generation=1, links=[
            schemas.LinkStatus(id="acc", kind="p2p", vnis=[5, 6], counters=[],
                               emulation=schemas.Emulation(capacity=20_000_000,
                                                           latency=10_000_000),
                               directions=[schemas.DirectionStatus(vni=6, emulation=up)]),
            schemas.LinkStatus(id="idle", kind="p2p", vnis=[7, 8], counters=[],
                               emulation=schemas.Emulation())])])
    assert show.netem_lines(status) == [
        "m acc netem delay 10ms rate 20mbit",
        "m acc --endpoint 6 netem loss 25% rate 2mbit",
        "m idle netem"]


async def _moa(*argv: str) -> tuple[int, str, str]:
    return await run_moa(*argv, env=dict(os.environ))


async def test_moa_set_refuses_before_it_connects() -> None:
    """Exit 2 with the word, nothing sent: the URL names a port where nothing listens, and the
    refusal comes before any attempt to connect (which would exit 1 saying it cannot)."""
    from moa_bus.service.embedded_nats import free_port
    url = f"nats://127.0.0.1:{free_port()}"
    for words, said in ((["seed", "42"], "netem word 'seed' is not supported"),
                        (["delay", "10ms", "gap", "5"], "'gap' needs 'reorder PERCENT'"),
                        (["rate", "10mbit", "-99"], "overhead -99 is outside -60..4096")):
        rc, out, err = await _moa("set", "a-b", "netem", *words, "--nats", url,
                                  "--connect-timeout", "1")
        assert (rc, out) == (2, ""), err
        assert said in err and "cannot connect" not in err, err


def test_a_table_file_is_read_as_tc_reads_it(tmp_path, monkeypatch) -> None:
    """`distribution NAME` of another table: NAME.dist where tc looks (iproute2's own
    experimental.dist on this host), or a path; sent as `custom` with the values, a file longer
    than moa's 4096 quantiles thinned to the table moa would hold of it anyway."""
    from datapath import distributions as dist

    exp = netem.parse("delay 10ms 2ms distribution experimental".split(),
                      read_table=set_verb.table_text)
    assert exp["distribution"] == "custom" and len(exp["distribution_table"]) == 4096
    long = [(k * 37) % 20000 - 10000 for k in range(16384)]
    path = tmp_path / "mine.dist"
    path.write_text("# made here\n" + "\n".join(" ".join(map(str, long[i:i + 8]))
                                                 for i in range(0, len(long), 8)))
    mine = netem.parse(["delay", "10ms", "2ms", "distribution", str(path)],
                       read_table=set_verb.table_text)
    assert mine["distribution_table"] == list(dist.custom_table(tuple(long)))
    monkeypatch.setenv("TC_LIB_DIR", str(tmp_path))
    assert set_verb.table_text("mine") == path.read_text()
    assert netem.parse("delay 10ms 2ms distribution mine".split(),
                       read_table=set_verb.table_text) == mine
    for words, said in (("distribution nosuch", "no nosuch.dist in"),
                        (f"distribution {tmp_path}/bad.dist", "No such file")):
        with pytest.raises(netem.NetemError, match=said) as e:
            netem.parse(f"delay 10ms 2ms {words}".split(), read_table=set_verb.table_text)
        assert e.value.word == "distribution"
    (tmp_path / "bad.dist").write_text("1 2 zz\n")
    with pytest.raises(netem.NetemError, match="'zz' is not an integer"):
        netem.parse(f"delay 10ms 2ms distribution {tmp_path}/bad.dist".split(),
                    read_table=set_verb.table_text)
    # `distribution custom` keeps the link's table; a link without one refuses it
    with pytest.raises(schemas.InvalidMessage, match="needs its distribution_table"):
        applied("delay 10ms 2ms distribution custom")
    # `moa set ... netem` reads the table: the patch carries its values
    assert set_verb.parse_words(["netem", "delay", "10ms", "2ms", "distribution",
                                 str(path)])[0] == mine
