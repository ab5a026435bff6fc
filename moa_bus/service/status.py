"""What `status` and `telemetry.links` report: the desired state (which the kernel was converged
to: docs/architecture.md, "Desired state") with the kernel's counters of each VNI."""
from __future__ import annotations

from collections.abc import Iterable

import schemas
from datapath.api import Datapath, StageCounters
from moa_bus.service.desired import DesiredState


def _stats(mid: str, link: str, vnis: list[int],
           counters: dict[int, dict[str, StageCounters]]) -> list[schemas.LinkStats]:
    return [schemas.LinkStats(materialization=mid, link=link, vni=vni, stage=stage,
                              packets=c.packets, bytes=c.bytes, drops=dict(c.drops))
            for vni in vnis for stage, c in counters.get(vni, {}).items()]


async def link_stats(desired: DesiredState, datapath: Datapath,
                     mids: Iterable[str] | None = None) -> list[schemas.LinkStats]:
    """Counters of every stage of every VNI of the materializations `mids` (None: all)."""
    wanted = sorted(desired.held if mids is None else mids)
    counters = await datapath.counters(desired.vnis(wanted))
    out: list[schemas.LinkStats] = []
    for mid in wanted:
        h = desired.get(mid)
        if h is None:
            continue
        for link in sorted(h.materialize.links, key=lambda link: link.id):
            out += _stats(mid, link.id, [ep.vni for ep in link.endpoints], counters)
    return out


async def status_reply(desired: DesiredState, datapath: Datapath, host: str,
                       mid: str | None = None,
                       unconverged: dict[str, str] | None = None) -> schemas.StatusReply:
    """The StatusReply of `mid` (None: every materialization). `unconverged`: materializations
    the kernel does not hold as desired (id -> why), reported in their `error`."""
    mids = sorted(desired.held) if mid is None else [mid]
    counters = await datapath.counters(desired.vnis(mids))
    mats = []
    for m_id in mids:
        h = desired.get(m_id)
        if h is None:
            continue
        links = [schemas.LinkStatus(id=link.id, kind=link.kind,
                                    vnis=[ep.vni for ep in link.endpoints],
                                    emulation=link.emulation,
                                    counters=_stats(m_id, link.id,
                                                    [ep.vni for ep in link.endpoints], counters))
                 for link in sorted(h.materialize.links, key=lambda link: link.id)]
        mats.append(schemas.MaterializationStatus(
            id=m_id, generation=h.generation, links=links,
            error=(unconverged or {}).get(m_id)))
    return schemas.StatusReply(host=host, materializations=mats,
                               fq_memory_bytes=datapath.fq_memory_bytes(),
                               datapath=datapath.box_counters())
