"""The libbpf loader on the host kernel (root, real BPF): datapath/libbpf/.

The object under test is datapath/bpf/selftest.bpf.c compiled into a private tmp dir (so parallel
`make bpf` runs cannot swap it under us); pins go to a unique directory under /sys/fs/bpf.
"""
from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from datapath.libbpf import abi as abi_mod
from datapath.libbpf import (
    BPF_NOEXIST, BpfError, BpfLoadError, BpfObject, LibbpfMissing, Map, MapType, RingBuffer,
    check_environment, load_libbpf, possible_cpus,
)
from tests.fixtures.bpf import compile_bpf, pin_root, selftest_o  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
FRAME = bytes(range(64))  # any 64 bytes: the selftest programs do not parse the packet


@pytest.fixture(scope="module")
def abi(selftest_o: Path) -> abi_mod.Abi:
    return abi_mod.load(str(selftest_o))


@pytest.fixture
def obj(selftest_o: Path):
    o = BpfObject.open(str(selftest_o))
    try:
        yield o
    finally:
        o.close()


def possible_from_sysfs() -> int:
    # "0-1" or "0-3,5": count the CPUs the kernel could ever bring up (per-CPU map slots).
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    n = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n


# -- open / load ----------------------------------------------------------------------------------

def test_programs_and_maps_by_name(obj: BpfObject) -> None:
    assert obj.program_names() == ["st_echo_prog", "st_ctx_prog", "st_event_prog", "st_lookup_prog",
                                   "st_sojourn_prog", "st_tstamp_prog"]
    assert {"moa_st_links", "moa_st_state", "moa_st_counters", "moa_st_global",
            "moa_st_events"} <= set(obj.map_names())
    prog = obj.program("st_echo_prog")
    assert prog.fd > 0 and prog.name == "st_echo_prog" and prog.type == 3  # BPF_PROG_TYPE_SCHED_CLS
    links = obj.map("moa_st_links")
    assert (links.type, links.key_size, links.value_size, links.max_entries) == (
        MapType.HASH, 4, 376, 16)
    assert obj.map("moa_st_links") is links  # cached
    with pytest.raises(KeyError, match="no_such_prog"):
        obj.program("no_such_prog")
    with pytest.raises(KeyError, match="no_such_map"):
        obj.map("no_such_map")


def test_context_manager_closes(selftest_o: Path) -> None:
    with BpfObject.open(str(selftest_o)) as o:
        prog = o.program("st_echo_prog")
        assert prog.test_run(FRAME).retval == 7
    assert prog.fd == -1
    with pytest.raises(BpfError, match="closed"):
        o.map("moa_st_links")


def test_missing_object_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.bpf.o"):
        BpfObject.open(str(tmp_path / "nope.bpf.o"))


BAD_PROGRAM = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("tc")
int bad_prog(struct __sk_buff *skb)
{
	/* Reads packet data without checking it against data_end: the verifier must refuse. */
	return *(__u32 *)(long)skb->data;
}

char LICENSE[] SEC("license") = "GPL";
"""


def test_verifier_failure_carries_log(tmp_path: Path) -> None:
    src = tmp_path / "bad.bpf.c"
    src.write_text(BAD_PROGRAM)
    bad = compile_bpf(src, tmp_path)
    with pytest.raises(BpfLoadError) as info:
        BpfObject.open(str(bad))
    e = info.value
    assert e.errno == errno.EACCES
    assert "invalid access to packet" in e.log          # the verifier's own words
    assert "processed" in e.log or "R0" in e.log or "r0" in e.log.lower()
    assert "invalid access to packet" in str(e)          # in the message too, not only .log
    assert str(bad) in str(e)


# -- .rodata and max_entries ----------------------------------------------------------------------

def test_rodata_values_reach_the_program(selftest_o: Path) -> None:
    with BpfObject.open(str(selftest_o),
                        rodata={"st_echo": 1000, "st_wide": 200, "st_small": 34}) as o:
        assert o.program("st_echo_prog").test_run(FRAME).retval == 1234
    with BpfObject.open(str(selftest_o)) as o:  # defaults as compiled
        assert o.program("st_echo_prog").test_run(FRAME).retval == 7
    with BpfObject.open(str(selftest_o), rodata={"st_small": b"\x05"}) as o:  # raw bytes
        assert o.program("st_echo_prog").test_run(FRAME).retval == 12


def test_rodata_unknown_name_and_overflow(selftest_o: Path) -> None:
    with pytest.raises(KeyError, match="not_a_global"):
        BpfObject.open(str(selftest_o), rodata={"not_a_global": 1})
    with pytest.raises(ValueError, match="st_small"):
        BpfObject.open(str(selftest_o), rodata={"st_small": 256})


def test_max_entries_override(selftest_o: Path) -> None:
    with BpfObject.open(str(selftest_o),
                        max_entries={"moa_st_links": 1000, "moa_st_state": 8}) as o:
        links = o.map("moa_st_links")
        assert links.max_entries == 1000
        assert o.map("moa_st_state").max_entries == 8
        for k in range(1000):  # the kernel really made room for 1000
            links.update(k, bytes(376))
        with pytest.raises(BpfError) as info:
            links.update(1000, bytes(376))
        assert info.value.errno == errno.E2BIG
    with pytest.raises(KeyError, match="no_such_map"):
        BpfObject.open(str(selftest_o), max_entries={"no_such_map": 1})


# -- maps ----------------------------------------------------------------------------------------

def test_hash_map_crud_and_keys(obj: BpfObject, abi: abi_mod.Abi) -> None:
    links = obj.map("moa_st_links")
    assert links.lookup(5) is None
    assert list(links.keys()) == []
    link = abi.Link(slot=9)
    link.stage[abi.Stage.INGRESS].rate_bps = 10**9
    links.update(5, link)
    links.update(ctypes.c_uint32(6), bytes(abi.Link(slot=11)))
    got = links.lookup(5, abi.Link)
    assert got.slot == 9 and got.stage[1].rate_bps == 10**9 and got.stage[0].rate_bps == 0
    assert links.lookup((5).to_bytes(4, "little")) == bytes(link)
    assert sorted(k.value for k in links.keys(ctypes.c_uint32)) == [5, 6]
    assert sorted(int.from_bytes(k, "little") for k in links.keys()) == [5, 6]
    assert (dict((k.value, v.slot) for k, v in links.items(ctypes.c_uint32, abi.Link))
            == {5: 9, 6: 11})
    # The program sees what userspace wrote (st_lookup_prog returns links[mark].slot or -1).
    ctx = abi.SkBuff(mark=6)
    assert obj.program("st_lookup_prog").test_run(FRAME, ctx).retval == 11
    ctx.mark = 77
    assert obj.program("st_lookup_prog").test_run(FRAME, ctx).retval == -1
    with pytest.raises(BpfError) as info:
        links.update(5, link, BPF_NOEXIST)
    assert info.value.errno == errno.EEXIST
    assert links.delete(5) is True
    assert links.delete(5) is False
    assert links.lookup(5) is None
    with pytest.raises(ValueError, match="376"):
        links.update(7, b"short")
    with pytest.raises(TypeError):
        links.update(7, 1.5)


def test_array_map(obj: BpfObject, abi: abi_mod.Abi) -> None:
    state = obj.map("moa_st_state")
    assert [int.from_bytes(k, "little") for k in state.keys()] == [0, 1, 2, 3]
    st = abi.StageState(t_last=123, ev_used=4)
    state.update(2, st)
    back = state.lookup(2, abi.StageState)
    assert (back.t_last, back.ev_used) == (123, 4)
    with pytest.raises(BpfError) as info:
        state.delete(2)  # arrays cannot delete
    assert info.value.errno == errno.EINVAL


def test_percpu_maps(obj: BpfObject, abi: abi_mod.Abi) -> None:
    ncpu = possible_cpus()
    assert ncpu == possible_from_sysfs()
    counters = obj.map("moa_st_counters")
    assert counters.is_percpu and counters.ncpu == ncpu
    before = counters.lookup(0, abi.LinkCounters)
    assert len(before) == ncpu and all(c.packets == 0 for c in before)
    for _ in range(5):
        obj.program("st_event_prog").test_run(FRAME)
    after = counters.lookup(0, abi.LinkCounters)
    assert sum(c.packets for c in after) == 5
    assert all(isinstance(v, bytes) and len(v) == 256 for v in counters.lookup(0))
    # One value per CPU ...
    counters.update(1, [abi.LinkCounters(packets=10 + i) for i in range(ncpu)])
    assert ([c.packets for c in counters.lookup(1, abi.LinkCounters)]
            == [10 + i for i in range(ncpu)])
    # ... or one value for every CPU.
    counters.update(1, abi.LinkCounters(bytes=3))
    assert [c.bytes for c in counters.lookup(1, abi.LinkCounters)] == [3] * ncpu
    with pytest.raises(ValueError, match="per-CPU"):
        counters.update(1, [bytes(256)] * (ncpu + 1))
    # A per-CPU hash: absent keys, insert, delete.
    glob = obj.map("moa_st_global")
    assert glob.lookup(3) is None
    glob.update(3, abi.GlobalCounters(unknown_vni=2))
    assert [g.unknown_vni for g in glob.lookup(3, abi.GlobalCounters)] == [2] * ncpu
    assert glob.delete(3) and glob.lookup(3) is None


# -- pinning ----------------------------------------------------------------------------------

def test_pinned_maps_are_reused_across_opens(selftest_o: Path, pin_root: str,
                                             abi: abi_mod.Abi) -> None:
    with BpfObject.open(str(selftest_o), pin_root=pin_root) as first:
        first.map("moa_st_links").update(7, abi.Link(slot=42))
        assert first.map("moa_st_links").pin_path == f"{pin_root}/moa_st_links"
        first.program("st_lookup_prog").pin(f"{pin_root}/prog_lookup")
    # Only moa_* maps are pinned; the internal .rodata/.bss maps are not.
    assert sorted(os.listdir(pin_root)) == sorted(
        ["moa_st_links", "moa_st_state", "moa_st_counters", "moa_st_global", "moa_st_events",
         "prog_lookup"])
    # The map outlived its object (the pin holds it) and a second open reuses it.
    with BpfObject.open(str(selftest_o), pin_root=pin_root) as second:
        assert second.map("moa_st_links").lookup(7, abi.Link).slot == 42
        second.map("moa_st_links").update(8, abi.Link(slot=43))
        # ... and the new program reads the reused map.
        assert second.program("st_lookup_prog").test_run(FRAME, abi.SkBuff(mark=8)).retval == 43
    # As after a service restart: the map by its pin, shape from the kernel.
    with Map.from_pin(f"{pin_root}/moa_st_links") as m:
        assert (m.name, m.type, m.key_size, m.value_size, m.max_entries) == (
            "moa_st_links", MapType.HASH, 4, 376, 16)
        assert sorted(int.from_bytes(k, "little") for k in m.keys()) == [7, 8]
        m.unpin()
    assert not os.path.exists(f"{pin_root}/moa_st_links")
    with pytest.raises(BpfError) as info:
        Map.from_pin(f"{pin_root}/moa_st_links")
    assert info.value.errno == errno.ENOENT


def test_map_pin_and_unpin(obj: BpfObject, pin_root: str) -> None:
    os.makedirs(pin_root)
    state = obj.map("moa_st_state")
    state.pin(f"{pin_root}/state")
    with Map.from_pin(f"{pin_root}/state") as again:
        again.update(1, bytes(168))
        assert again.max_entries == 4 and again.value_size == 168
    state.unpin()
    assert os.listdir(pin_root) == []


def test_pinned_map_shape_mismatch_fails_load(selftest_o: Path, pin_root: str) -> None:
    BpfObject.open(str(selftest_o), pin_root=pin_root).close()
    with pytest.raises(BpfLoadError, match="moa_st_links"):
        BpfObject.open(str(selftest_o), pin_root=pin_root, max_entries={"moa_st_links": 32})


# -- test_run with __sk_buff ------------------------------------------------------------------

def test_test_run_skb_ctx_in_and_out(obj: BpfObject, abi: abi_mod.Abi) -> None:
    ctx = abi.SkBuff(mark=5, tstamp=100)
    run = obj.program("st_ctx_prog").test_run(FRAME, ctx)
    assert run.retval == 0  # TC_ACT_OK
    assert isinstance(run.ctx, abi.SkBuff)
    assert run.ctx.mark == 5 + 7      # mark + st_echo
    assert run.ctx.tstamp == 1100     # tstamp + 1000
    assert run.ctx.cb[0] == len(FRAME)
    assert run.data == FRAME
    assert ctx.mark == 5              # the caller's ctx is not modified
    rep = obj.program("st_echo_prog").test_run(FRAME, repeat=1000)
    assert rep.retval == 7 and rep.duration_ns >= 0
    with pytest.raises(BpfError) as info:  # output buffer too small for the packet
        obj.program("st_echo_prog").test_run(FRAME, data_out_size=10)
    assert info.value.errno == errno.ENOSPC


# -- ring buffer --------------------------------------------------------------------------------

async def test_ring_buffer_events_through_asyncio(obj: BpfObject, abi: abi_mod.Abi) -> None:
    loop = asyncio.get_running_loop()
    events: list = []
    done = loop.create_future()

    def on_event(data: bytes) -> None:
        events.append(abi.DropEvent.from_buffer_copy(data))
        if len(events) == 3 and not done.done():
            done.set_result(None)

    with RingBuffer(obj.map("moa_st_events"), on_event) as rb:
        rb.attach()
        prog = obj.program("st_event_prog")
        for vni in (100, 200, 300):
            prog.test_run(FRAME, abi.SkBuff(mark=vni))
        await asyncio.wait_for(done, timeout=10)
        rb.detach()
    assert [e.vni for e in events] == [100, 200, 300]
    assert all(e.version == abi.DROP_EVENT_VERSION == 2 for e in events)
    assert all(list(e.reserved) == [0, 0] for e in events)
    assert all(e.reason == abi.DropReason.QUEUE and e.stage == abi.Stage.INGRESS for e in events)
    assert all(e.len == len(FRAME) and e.segs == 1 for e in events)
    assert events[0].time_ns <= events[1].time_ns <= events[2].time_ns


def test_ring_buffer_consume_poll_and_callback_errors(obj: BpfObject, abi: abi_mod.Abi) -> None:
    seen: list[bytes] = []
    with RingBuffer(obj.map("moa_st_events"), seen.append) as rb:
        assert rb.fileno() >= 0
        assert rb.consume() == 0
        obj.program("st_event_prog").test_run(FRAME, abi.SkBuff(mark=1))
        obj.program("st_event_prog").test_run(FRAME, abi.SkBuff(mark=2))
        assert rb.poll(1000) == 2
        assert [abi.DropEvent.from_buffer_copy(b).vni for b in seen] == [1, 2]

    def boom(_data: bytes) -> None:
        raise RuntimeError("callback failed")

    with RingBuffer(obj.map("moa_st_events"), boom) as rb:
        obj.program("st_event_prog").test_run(FRAME)
        with pytest.raises(RuntimeError, match="callback failed"):
            rb.consume()
    with pytest.raises(BpfError, match="not a ring buffer"):
        RingBuffer(obj.map("moa_st_links"), seen.append)


# -- what is missing -------------------------------------------------------------------------

def test_libbpf_missing_names_the_library(selftest_o: Path) -> None:
    with pytest.raises(LibbpfMissing, match="/nonexistent/libbpf.so.1"):
        load_libbpf("/nonexistent/libbpf.so.1")
    # Through the environment variable, in a fresh interpreter (the library loads once).
    code = ("from datapath.libbpf import BpfObject, LibbpfMissing\n"
            f"try:\n    BpfObject.open({str(selftest_o)!r})\n"
            "except LibbpfMissing as e:\n    print('MISSING', e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "MOA_LIBBPF": "/nonexistent/libbpf.so.1"}, timeout=60)
    assert "MISSING libbpf is missing" in out.stdout, out.stderr
    assert "/nonexistent/libbpf.so.1" in out.stdout


def test_libbpf_missing_symbol(tmp_path: Path) -> None:
    # A real shared library that is not libbpf: the first absent symbol is named.
    libc = "libc.so.6"
    with pytest.raises(LibbpfMissing, match="lacks the symbol libbpf_set_print"):
        load_libbpf(libc)


def test_bpffs_missing_is_named(selftest_o: Path, tmp_path: Path) -> None:
    with pytest.raises(LibbpfMissing, match="bpffs is not mounted"):
        BpfObject.open(str(selftest_o), pin_root=str(tmp_path / "pins"))


def test_unprivileged_load_is_named(selftest_o: Path) -> None:
    # Root's uid with an empty capability bounding set: after exec the process has no
    # capabilities at all (CAP_BPF, CAP_SYS_ADMIN gone) but still owns the checkout's files, so
    # the test does not depend on where CI cloned the repository or its permissions.
    code = ("from datapath.libbpf import BpfObject, LibbpfMissing\n"
            f"try:\n    BpfObject.open({str(selftest_o)!r})\n"
            "except LibbpfMissing as e:\n    print('MISSING', e)\n")
    out = subprocess.run(["setpriv", "--inh-caps=-all", "--bounding-set=-all",
                          sys.executable, "-c", code],
                         cwd=REPO, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert "MISSING BPF privilege is missing" in out.stdout, (out.stdout, out.stderr)


FUTURE_HELPER_PROGRAM = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/* A helper id no kernel has (yet): stands for a feature this kernel lacks. */
static long (*bpf_future_helper)(void) = (void *)9999;

SEC("tc")
int future(struct __sk_buff *skb)
{
	return bpf_future_helper();
}

char LICENSE[] SEC("license") = "GPL";
"""


def test_missing_kernel_helper_is_named(tmp_path: Path) -> None:
    src = tmp_path / "future.bpf.c"
    src.write_text(FUTURE_HELPER_PROGRAM)
    with pytest.raises(LibbpfMissing, match="kernel feature missing: BPF helper #9999") as info:
        BpfObject.open(str(compile_bpf(src, tmp_path)))
    assert "invalid func unknown#9999" in info.value.log


def test_version_and_doctor_entry_point() -> None:
    from datapath import libbpf

    assert libbpf.version() >= (1, 1)
    lib = libbpf.load_library()
    assert (lib.libbpf_major_version(), lib.libbpf_minor_version()) == libbpf.version()


def test_check_environment_here() -> None:
    check_environment(map_types=("hash", "percpu_array", "ringbuf"),
                      helpers=("ringbuf_reserve", "skb_set_tstamp", "spin_lock"))
    with pytest.raises(LibbpfMissing, match="bpffs"):
        check_environment(pin_root="/tmp")


def test_a_limited_batch_read_of_a_fuller_hash_map_stops_at_its_limit(obj: BpfObject,
                                                                      abi: abi_mod.Abi) -> None:
    """A hash map gives out whole buckets: reading fewer entries than it holds ends where the next
    bucket does not fit (ENOSPC from the kernel), which is where the limit is, not an error. A
    status read during an apply does this: the map grows while it is read."""
    links = obj.map("moa_st_links")
    for k in range(16):  # full: 16 keys in 16 buckets share some
        links.update(100 + k, abi.Link(slot=k))
    for limit in range(4, 17):
        keys, _, n = links.lookup_batch(limit, chunk=limit)
        got = {int.from_bytes(keys[4 * j:4 * j + 4], "little") for j in range(n)}
        assert 0 < n <= limit and len(got) == n and got <= set(range(100, 116)), (limit, got)
    assert links.lookup_batch()[2] == 16


def test_a_batch_read_of_an_array_starts_where_asked(obj: BpfObject, abi: abi_mod.Abi) -> None:
    """`start` reads an array from that index on (a status page reads the window of its links'
    slots, not the array from 0): plain and per-CPU arrays, to the end or to a limit; a hash
    has no index to start from and is refused."""
    state, counters = obj.map("moa_st_state"), obj.map("moa_st_counters")
    for i in range(4):
        state.update(i, abi.StageState(t_last=100 + i))
        counters.update(i, abi.LinkCounters(packets=200 + i))
    stride = counters._slot * counters.ncpu
    for start, limit, want in ((0, 2, [0, 1]), (1, 2, [1, 2]), (2, None, [2, 3]), (3, 9, [3])):
        keys, values, n = state.lookup_batch(limit, start=start)
        assert [int.from_bytes(keys[4 * j:4 * j + 4], "little") for j in range(n)] == want
        size = state.value_size
        assert [abi.StageState.from_buffer_copy(values[j * size:(j + 1) * size]).t_last
                for j in range(n)] == [100 + k for k in want]
        keys, values, n = counters.lookup_batch(limit, chunk=1, start=start)
        assert [int.from_bytes(keys[4 * j:4 * j + 4], "little") for j in range(n)] == want
        assert [abi.LinkCounters.from_buffer_copy(values[j * stride:j * stride + 256]).packets
                for j in range(n)] == [200 + k for k in want]
    with pytest.raises(ValueError, match="arrays"):
        obj.map("moa_st_links").lookup_batch(start=1)
