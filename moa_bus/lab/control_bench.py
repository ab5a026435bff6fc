"""`moa bench control`: the control plane's figures, measured on this machine in one run.

A throw-away testbed in network namespaces (moa_bus/lab/host_testbed.py: an underlay bridge, the
box with uplink `up0`, three "hypervisors" whose nodes hold the far ends of the VXLAN links), a
nats-server on a free loopback port, and `moa serve` as its own process with the real
KernelDatapath (loss-only on a kernel without sch_fq). Then, each figure independently (one that
cannot be measured is reported as null with the reason in `notes`):

- request/reply round trip, sequential, `--requests` each: status (a box holding one link) and an
  unchanged materialize of that link; p50/p99 per kind and over both (rtt_p50_us, rtt_p99_us);
- materialize `--p2p` point-to-point links and `--lans` LANs of `--lan-size` in one Materialize
  through NATS (materialize_s; the operation count comes from a dry run first: ops_per_s);
- a parameter-only update of every link of it through NATS, by tag (update_links, update_s), and
  10,000 point-to-point links' parameters (20,000 VNIs, each an emulation of its own) rewritten
  the way Datapath.update writes them, in a classifier of its own (map_update_10k_s: no
  netlink, no NATS);
- the service's resident memory with all that applied (rss_mib), the pinned BPF maps' memory
  (bpf_map_bytes), the worst-case sch_fq memory the links imply, as `moa status` reports it;
- a restart: `kill -9` of the service holding all of it, started again, until its first status
  reply that holds every link at the generation acked before (restart_s: the durable state is
  read, the kernel compared with it, and the service answers);
- TCP throughput through a point-to-point link (the redirect pair) and through a 3-member LAN
  (the bridge), iperf3 between two nodes, offloads on (pair_gbps, bridge_gbps);
- drop events from the BPF ring buffer to NATS: a classifier of its own in this process, a
  loss-1 link driven with BPF_PROG_TEST_RUN, events read in asyncio and published by the bus's
  Telemetry in batches, counted by a subscriber (drop_events_per_s); drop_events_lost is what
  has not arrived 2 s after the flood (failed ring buffer reservations included), 0 when the
  path keeps up.

- status while a 10,000-link Materialize (of 10,000 more point-to-point links) is applied:
  whole-box status requests (every page, as `moa status` walks them) one after the other until
  its ack, p50/p99/max (status_during_apply_ms: the p99);
- 30,000 point-to-point links (60,000 VTEPs: with what the box holds already, near the
  classifier's 65,536) in one Materialize, larger than the server's 1 MB max_payload, so sent
  through the object store as `moa materialize` sends it (materialize_30k_s), then the whole
  box's status, every page (status_30k_ms, pages, bytes), then its dematerialize
  (dematerialize_30k_s).
- flow mode, 10,000 then 100,000 point-to-point links on a box of its own (flow_*: its module).

The last two of the first list run on a classifier of their own in this process
(moa_bus/lab/control_bench_classifier.py); the two steps at scale are in
moa_bus/lab/control_bench_scale.py, flow mode's in moa_bus/lab/control_bench_flow.py.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from moa_bus.lab import control_bench_classifier as classifier_steps
from moa_bus.lab import control_bench_flow as flow_steps
from moa_bus.lab import control_bench_scale as scale_steps
from moa_bus.lab.host_testbed import BOX_ADDR, UPLINK, Testbed, ns_exec, nsenter, sh, unique_tag
from moa_bus.service.embedded_nats import NatsServer, free_port
from moa_bus.service.subjects import DRY_RUN_HEADER, Subjects

P2P_FIRST_VNI = 10_000
LAN_FIRST_VNI = 40_000
RTT_VNIS = (90_001, 90_002)
PAIR_VNIS = (91_001, 91_002)
LAN_VNIS = (92_001, 92_002, 92_003)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--p2p", type=int, default=1000, help="point-to-point links (1000)")
    parser.add_argument("--lans", type=int, default=50, help="LANs (50)")
    parser.add_argument("--lan-size", type=int, default=8, help="members per LAN (8)")
    parser.add_argument("--requests", type=int, default=2000,
                        help="round trips per kind of request (>= 2000)")
    parser.add_argument("--drop-events", type=int, default=200_000,
                        help="drop events pushed through the ring buffer (200000)")
    parser.add_argument("--iperf-seconds", type=float, default=5.0, help="per iperf3 run (5)")
    parser.add_argument("--flow-links", metavar="SMALL,BIG", type=flow_steps.sizes,
                        default=(flow_steps.FLOW_SMALL, flow_steps.FLOW_BIG),
                        help="flow mode's two sizes in links (10000,100000; flow_links_*)")
    parser.add_argument("--only", metavar="STEPS",
                        help=f"comma-separated steps to run, of {', '.join(STEPS)} "
                             "(default: all; update, memory and restart need materialize)")


STEPS = ("rtt", "materialize", "update", "memory", "restart", "throughput", "map_updates",
         "drop_events", "during_apply", "big", "flow")


# ---------------------------------------------------------------------------- documents

def _link(lid: str, vnis: list[int], remotes: list[str], emulation: dict) -> dict:
    return {"id": lid, "tags": ["bench"], "emulation": emulation,
            "endpoints": [{"vni": v, "remote": r} for v, r in zip(vnis, remotes)]}


def big_materialize(bed: Testbed, p2p: int, lans: int, lan_size: int) -> dict:
    emu = {"loss": 0.001}
    links = [_link(f"p{i}", [P2P_FIRST_VNI + 2 * i, P2P_FIRST_VNI + 2 * i + 1],
                   [bed.hv_addr(1), bed.hv_addr(2)], emu) for i in range(p2p)]
    for k in range(lans):
        vnis = [LAN_FIRST_VNI + lan_size * k + j for j in range(lan_size)]
        links.append(_link(f"lan{k}", vnis, [bed.hv_addr(1 + j % 3) for j in range(lan_size)], emu))
    return {"id": "bench", "links": links}


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _links_map(pin_root: str) -> dict[bytes, bytes]:
    from datapath.libbpf import Map

    with Map.from_pin(os.path.join(pin_root, "moa_links")) as m:
        return {bytes(k): bytes(v) for k, v in m.items()}


def _bpf_map_bytes(pin_root: str) -> int:
    total = 0
    for name in sorted(os.listdir(pin_root)):
        r = sh("bpftool", "-j", "map", "show", "pinned", os.path.join(pin_root, name), check=False)
        if r.returncode == 0:
            total += int(json.loads(r.stdout).get("bytes_memlock", 0))
    return total


# ---------------------------------------------------------------------------- the measurements

class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out: dict[str, Any] = {
            "p2p_links": args.p2p, "lans": args.lans, "lan_size": args.lan_size,
            "materialize_s": None, "operations": None, "ops_per_s": None,
            "update_links": None, "update_s": None, "map_update_10k_s": None,
            "rss_mib": None, "bpf_map_bytes": None, "fq_memory_bytes": None,
            "pair_gbps": None, "bridge_gbps": None,
            "rtt_p50_us": None, "rtt_p99_us": None, "requests": args.requests, "restart_s": None,
            "drop_events_per_s": None, "drop_events": None, "drop_events_lost": None,
            "status_during_apply_ms": None, "materialize_30k_s": None, "status_30k_ms": None,
            **{key: None for key in flow_steps.KEYS},
            "notes": [],
        }
        self.steps = set(args.only.split(",")) if getattr(args, "only", None) else set(STEPS)
        unknown = self.steps - set(STEPS)
        if unknown:
            raise SystemExit(f"moa bench control: --only: unknown steps {sorted(unknown)}")
        self.host = f"bench{os.getpid()}"
        self.subjects = Subjects(self.host)

    def note(self, what: str, e: BaseException) -> None:
        self.out["notes"].append(f"{what}: {type(e).__name__}: {e}")

    async def run(self) -> dict[str, Any]:
        import nats

        bed = Testbed(tag=unique_tag("mbc")).build()
        tmp = Path(tempfile.mkdtemp(prefix="moa-bench-"))
        server = NatsServer(port=free_port(), state_dir=tmp / "nats")
        serve: subprocess.Popen[bytes] | None = None
        nc = None
        try:
            await asyncio.to_thread(server.start)
            self.url = server.url
            serve = self._start_serve(bed, server.url, tmp / "serve.log")
            nc = await nats.connect(server.url, connect_timeout=5, max_reconnect_attempts=1,
                                    pending_size=256 << 20)
            await self._wait_ready(nc, serve, tmp / "serve.log")
            self.out["loss_only"] = "loss-only" in (tmp / "serve.log").read_text(errors="replace")
            for what, step in (("rtt", self._rtt), ("materialize", self._materialize),
                               ("update", self._update), ("memory", self._memory)):
                if what in self.steps:
                    try:
                        await step(nc, bed, serve)
                    except Exception as e:
                        self.note(what, e)
            if "restart" in self.steps:
                try:
                    serve = await self._restart(nc, bed, serve, tmp)
                except Exception as e:
                    self.note("restart", e)
            if "throughput" in self.steps:
                try:
                    await self._throughput(nc, bed, serve)
                except Exception as e:
                    self.note("throughput", e)
            if "map_updates" in self.steps:
                try:
                    await asyncio.to_thread(classifier_steps.map_updates, self.out)
                except Exception as e:
                    self.note("map updates", e)
            if "drop_events" in self.steps:
                try:
                    await classifier_steps.drop_events(self.out, server.url, self.subjects,
                                                       self.args.drop_events)
                except Exception as e:
                    self.note("drop events", e)
            for what, step in (("during_apply", scale_steps.during_apply),
                               ("big", scale_steps.big), ("flow", flow_steps.flow)):
                if what in self.steps:
                    try:
                        await step(self, nc, bed)
                    except Exception as e:
                        self.note(what, e)
        finally:
            if nc is not None:
                await nc.close()
            if serve is not None:
                await scale_steps.stop_serve(serve, 30)
            await asyncio.to_thread(server.stop)
            self.out["notes"] += [f"cleanup: {p}" for p in bed.cleanup()]
            shutil.rmtree(tmp, ignore_errors=True)
        return self.out

    def _start_serve(self, bed: Testbed, url: str, log: Path, host: str | None = None,
                     extra: list[str] = ()) -> subprocess.Popen[bytes]:
        env = {**os.environ, "MOA_NATS_URL": "", "MOA_UPLINK": "", "MOA_HOST": ""}
        cmd = [sys.executable, "-m", "moa_bus.cli", "serve", "--nats", url,
               "--host", host or self.host, "--uplink", UPLINK, "--local", BOX_ADDR,
               "--netns", bed.box, "--pin-root", bed.pin_root, "--state-dir", bed.state_dir,
               "--allow-loss-only", "--p2p-mode", "vtep", *extra]  # flow cases say flow
        with open(log, "ab") as f:
            return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f,
                                    stderr=subprocess.STDOUT, env=env,
                                    cwd=str(Path(__file__).resolve().parents[2]))

    async def _wait_ready(self, nc, serve: subprocess.Popen[bytes], log: Path,
                          subjects: Subjects | None = None) -> None:
        import nats.errors

        for _ in range(600):
            if serve.poll() is not None:
                raise RuntimeError(f"moa serve exited: {log.read_text(errors='replace')[-2000:]}")
            try:
                await nc.request((subjects or self.subjects).op("status"), b"{}", timeout=1)
                return
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                await asyncio.sleep(0.1)
        raise RuntimeError("moa serve not ready within 60 s")

    async def _request(self, nc, op: str, doc: object, timeout: float = 600,
                       headers: dict[str, str] | None = None) -> dict:
        data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        reply = json.loads((await nc.request(self.subjects.op(op), data, timeout=timeout,
                                             headers=headers)).data)
        if isinstance(reply, dict) and reply.get("ok") is False:
            raise RuntimeError(f"{op} refused: {reply.get('error')}")
        return reply

    async def _rtt(self, nc, bed: Testbed, serve) -> None:
        doc = json.dumps({"id": "rtt", "links": [
            _link("r", list(RTT_VNIS), [bed.hv_addr(1), bed.hv_addr(2)], {})]}).encode()
        await self._request(nc, "materialize", doc)
        everything: list[float] = []
        for kind, op, data in (("status", "status", b"{}"),
                               ("materialize_unchanged", "materialize", doc)):
            for _ in range(50):  # warm-up
                await nc.request(self.subjects.op(op), data, timeout=30)
            times = []
            for _ in range(self.args.requests):
                t0 = time.perf_counter_ns()
                msg = await nc.request(self.subjects.op(op), data, timeout=30)
                times.append((time.perf_counter_ns() - t0) / 1000)
                if b'"ok":false' in msg.data:
                    raise RuntimeError(f"{op} refused: {msg.data[:200]!r}")
            self.out[f"rtt_{kind}_p50_us"] = round(_pct(times, 0.5), 1)
            self.out[f"rtt_{kind}_p99_us"] = round(_pct(times, 0.99), 1)
            everything += times
        self.out["rtt_p50_us"] = round(_pct(everything, 0.5), 1)
        self.out["rtt_p99_us"] = round(_pct(everything, 0.99), 1)

    async def _materialize(self, nc, bed: Testbed, serve) -> None:
        doc = big_materialize(bed, self.args.p2p, self.args.lans, self.args.lan_size)
        data = json.dumps(doc).encode()
        plan = await self._request(nc, "materialize", data, headers={DRY_RUN_HEADER: "1"})
        self.out["operations"] = plan.get("count", len(plan["operations"]))
        t0 = time.perf_counter()
        ack = await self._request(nc, "materialize", data)
        self.out["materialize_s"] = round(time.perf_counter() - t0, 3)
        self.out["vteps"] = sum(len(link["endpoints"]) for link in doc["links"])
        self.out["ops_per_s"] = round(self.out["operations"] / self.out["materialize_s"])
        self.out["materialize_elapsed_ms"] = ack.get("elapsed_ms")
        # Proof that it reached the kernel: moa's devices (VTEPs and bridges) in the box.
        links = json.loads(sh("ip", "-n", bed.box, "-j", "link", "show").stdout)
        self.out["moa_devices"] = sum(1 for d in links if d.get("ifalias", "").startswith("moa:"))

    async def _update(self, nc, bed: Testbed, serve) -> None:
        if self.out["materialize_s"] is None:
            raise RuntimeError("nothing materialized to update")
        doc = {"id": "bench", "links": [{"tag": "bench", "emulation": {"loss": 0.002}}]}
        before = await asyncio.to_thread(_links_map, bed.pin_root)
        t0 = time.perf_counter()
        await self._request(nc, "update", doc)
        self.out["update_s"] = round(time.perf_counter() - t0, 3)
        self.out["update_links"] = self.args.p2p + self.args.lans
        # Proof that it reached the kernel: every VNI of the materialization has new parameters.
        after = await asyncio.to_thread(_links_map, bed.pin_root)
        self.out["update_vnis_changed"] = sum(1 for k, v in after.items() if before.get(k) != v)

    async def _memory(self, nc, bed: Testbed, serve) -> None:
        self.out["rss_mib"] = _rss_mib(serve.pid)
        self.out["bpf_map_bytes"] = await asyncio.to_thread(_bpf_map_bytes, bed.pin_root)
        st = await self._request(nc, "status", b"{}")
        self.out["fq_memory_bytes"] = st.get("fq_memory_bytes")

    async def _restart(self, nc, bed: Testbed, serve: subprocess.Popen[bytes],
                       tmp: Path) -> subprocess.Popen[bytes]:
        """kill -9, start again, time until the first status reply that holds every link of
        the materialization at the generation it had: the service restarted for real."""
        import nats.errors

        before = await self._request(nc, "status", {"id": "bench"})
        (held,) = before["materializations"]
        want = (held["generation"], len(held["links"]))
        serve.kill()
        serve.wait()
        t0 = time.perf_counter()
        serve = self._start_serve(bed, self.url, tmp / "serve.log")
        while time.perf_counter() - t0 < 120:
            if serve.poll() is not None:
                raise RuntimeError("moa serve exited after its restart")
            try:
                reply = json.loads((await nc.request(self.subjects.op("status"),
                                                     b'{"id": "bench"}', timeout=1)).data)
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                await asyncio.sleep(0.01)
                continue
            got = reply.get("materializations") or [{}]
            if (got[0].get("generation"), len(got[0].get("links", []))) == want:
                self.out["restart_s"] = round(time.perf_counter() - t0, 3)
                return serve
            raise RuntimeError(f"after the restart, status holds {got[0].get('generation')} / "
                               f"{len(got[0].get('links', []))} links, not {want}")
        raise RuntimeError("no status reply within 120 s of the restart")

    async def _throughput(self, nc, bed: Testbed, serve) -> None:
        doc = {"id": "tput", "links": [
            _link("pair", list(PAIR_VNIS), [bed.hv_addr(1), bed.hv_addr(2)], {}),
            _link("lan", list(LAN_VNIS), [bed.hv_addr(i) for i in (1, 2, 3)], {})]}
        await self._request(nc, "materialize", doc)
        bed.add_endpoint(1, PAIR_VNIS[0], "192.168.31.1/24")
        bed.add_endpoint(2, PAIR_VNIS[1], "192.168.31.2/24")
        for i, vni in enumerate(LAN_VNIS, start=1):
            bed.add_endpoint(i, vni, f"192.168.32.{i}/24")
        self.out["pair_gbps"] = await asyncio.to_thread(self._iperf, bed, "192.168.31")
        self.out["bridge_gbps"] = await asyncio.to_thread(self._iperf, bed, "192.168.32")

    def _iperf(self, bed: Testbed, net: str) -> float:
        ns_exec(bed.node(1), "ping", "-c", "2", "-i", "0.2", "-W", "2", f"{net}.2")  # ARP, or fail
        port = free_port()
        srv = subprocess.Popen([*nsenter(bed.node(2)), "iperf3", "-s", "-1", "-B", f"{net}.2",
                                "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(50):
                time.sleep(0.1)
                r = ns_exec(bed.node(1), "iperf3", "-c", f"{net}.2", "-p", str(port), "-B",
                             f"{net}.1", "-t", str(self.args.iperf_seconds), "-J", check=False,
                             timeout=self.args.iperf_seconds + 60)
                if r.returncode == 0:
                    bps = json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"]
                    return round(bps / 1e9, 2)
                if "Connection refused" not in r.stdout + r.stderr:
                    raise RuntimeError(f"iperf3: {r.stdout[-300:]} {r.stderr[-300:]}")
            raise RuntimeError("iperf3 server did not come up")
        finally:
            srv.kill()
            srv.wait()


# ---------------------------------------------------------------------------- the command

def run(args: argparse.Namespace) -> int:
    if args.requests < 2000:
        raise SystemExit("moa bench control: --requests must be at least 2000")
    for step in (args.only or "").split(","):
        if step and step not in STEPS:
            raise SystemExit(f"moa bench control: --only: {step!r} is not one of "
                             f"{', '.join(STEPS)}")
    if os.geteuid() != 0:
        raise SystemExit("moa bench control: needs root (network namespaces, BPF)")
    import uvloop

    out = uvloop.run(Bench(args).run())
    if args.json:
        print(json.dumps(out))
        return 0
    _print(out)
    return 0


def _fmt(v: Any, unit: str = "") -> str:
    return "not measured" if v is None else f"{v}{unit}"


def _print(r: dict[str, Any]) -> None:
    mode = " (loss-only: no sch_fq in this kernel)" if r.get("loss_only") else ""
    print(f"moa control plane{mode}")
    print(f"  materialize {r['p2p_links']} P2P links + {r['lans']} LANs of {r['lan_size']}: "
          f"{_fmt(r['materialize_s'], ' s')}, {_fmt(r['operations'])} operations, "
          f"{_fmt(r['ops_per_s'], ' ops/s')}; {_fmt(r.get('moa_devices'))} moa devices in the box")
    print(f"  parameter-only update of {_fmt(r['update_links'])} links through NATS: "
          f"{_fmt(r['update_s'], ' s')} ({_fmt(r.get('update_vnis_changed'))} VNIs' parameters "
          f"changed in the kernel); 10,000 links' parameters written to the map: "
          f"{_fmt(r['map_update_10k_s'], ' s')}")
    print(f"  service RSS {_fmt(r['rss_mib'], ' MiB')}, pinned BPF maps "
          f"{_fmt(r['bpf_map_bytes'], ' B')}, worst-case fq memory "
          f"{_fmt(r['fq_memory_bytes'], ' B')}")
    print(f"  restart: kill -9, then the first correct status reply after "
          f"{_fmt(r['restart_s'], ' s')}")
    print(f"  TCP through the pair {_fmt(r['pair_gbps'], ' Gbit/s')}, through a bridge "
          f"{_fmt(r['bridge_gbps'], ' Gbit/s')}")
    print(f"  request/reply round trip over {r['requests']} requests per kind: "
          f"p50 {_fmt(r['rtt_p50_us'], ' us')}, p99 {_fmt(r['rtt_p99_us'], ' us')} "
          f"(status p50/p99 {_fmt(r.get('rtt_status_p50_us'))}/"
          f"{_fmt(r.get('rtt_status_p99_us'))} us, "
          f"unchanged materialize {_fmt(r.get('rtt_materialize_unchanged_p50_us'))}/"
          f"{_fmt(r.get('rtt_materialize_unchanged_p99_us'))} us)")
    print(f"  drop events ring buffer -> NATS: {_fmt(r['drop_events_per_s'], ' events/s')} "
          f"({_fmt(r['drop_events'])} events, lost {_fmt(r['drop_events_lost'])})")
    print(f"  whole-box status while 10,000 links are materialized: p50 "
          f"{_fmt(r.get('status_during_apply_p50_ms'), ' ms')}, p99 "
          f"{_fmt(r['status_during_apply_ms'], ' ms')} over "
          f"{_fmt(r.get('status_during_apply_requests'))} requests (box holding "
          f"{_fmt(r.get('status_during_apply_links'))} links; the materialize took "
          f"{_fmt(r.get('apply_10k_s'), ' s')})")
    print(f"  30,000 P2P links: materialize {_fmt(r['materialize_30k_s'], ' s')} "
          f"({_fmt(r.get('materialize_30k_bytes'))} B through the object store), whole-box "
          f"status {_fmt(r['status_30k_ms'], ' ms')} ({_fmt(r.get('status_30k_pages'))} pages, "
          f"{_fmt(r.get('status_30k_bytes'))} B), dematerialize "
          f"{_fmt(r.get('dematerialize_30k_s'), ' s')}")
    print(flow_steps.describe(r, _fmt))
    for n in r["notes"]:
        print(f"  not measured or partial: {n}")

