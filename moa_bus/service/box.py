"""The box as `moa serve` opens it: the real datapath on the uplink, converged at start to the
durable desired state (docs/architecture.md, "Desired state"). `moa serve` and the tests of
restarts both start a box through open_kernel_box.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from datapath.api import Datapath
from moa_bus.service.box_checks import no_fq, require_uplink, uplink_ipv4
from moa_bus.service.desired import DesiredState, StateStore
from moa_bus.service.schedule import in_force
from moa_bus.service.settings import ServeSettings, fq_memory_max_bytes, horizon_ns

log = logging.getLogger("moa.bus")


@dataclass
class OpenedBox:
    """A box ready to serve: its datapath converged to its durable desired state."""
    datapath: Datapath
    desired: DesiredState
    unconverged: dict[str, str]  # materializations the kernel could not be converged to


def desired_dir(s: ServeSettings) -> Path:
    """Where this box's desired state lives: per host id, as its JetStream stream is."""
    return Path(s.state_dir) / "desired" / s.host


async def open_kernel_box(s: ServeSettings) -> OpenedBox:
    """The real datapath (datapath.api.KernelDatapath) on s.uplink, converged to the desired
    state stored under s.state_dir: what the kernel holds and no materialization owns is
    removed, what a materialization lacks is made (docs/architecture.md, "Desired state").
    `moa serve` and the tests of restarts both start a box through here."""
    from datapath.api import DatapathConfig, FqUnavailable, KernelDatapath
    from datapath.classifier import ClassifierConfig

    uplink = require_uplink(s)
    store = StateStore(desired_dir(s))
    held, stored_generation = store.load()  # a damaged state stops us before the kernel
    local = s.local or uplink_ipv4(uplink, s.netns)
    config = DatapathConfig(uplink=uplink, local=local, netns=s.netns, pin_root=s.pin_root,
                            allow_loss_only=s.allow_loss_only, host=s.host,
                            horizon_ns=horizon_ns(s), fq_memory_max=fq_memory_max_bytes(s),
                            p2p_mode=s.p2p_mode,
                            classifier=ClassifierConfig(max_links=s.max_links))
    try:
        datapath = await KernelDatapath.start(config, [h.materialize for h in held.values()])
    except FqUnavailable as e:
        raise no_fq(str(e)) from None
    try:
        desired = DesiredState(store=store, held=held,
                               generation=max(stored_generation, datapath.generation_floor()),
                               removed=store.removed, on_generation=datapath.record_generation)
        datapath.record_generation(desired.generation)
        # a schedule's links as its steps made them now (moa_bus/service/schedule.py)
        report = await datapath.reconcile([in_force(m) for m in desired.materializations()])
    except BaseException:
        await datapath.close()
        raise
    for line in report.operations:
        log.info("start-up: %s", line)
    for line in report.purged:
        log.info("start-up: purged %s (no materialization owns it)", line)
    for mid, why in report.failed.items():
        log.error("start-up: %s is not what the kernel holds: %s", mid, why)
    log.info("desired state %s: %d materialization(s), generation %d; start-up changed %d "
             "thing(s)", desired_dir(s), len(held), desired.generation,
             len(report.operations) + len(report.purged))
    return OpenedBox(datapath, desired, dict(report.failed))
