"""The remotes of a materialization against the box's routes: a remote reached by another way
than the uplink is refused before anything is planned (datapath/api.py calls it on the netlink
worker, in the box's namespace)."""
from __future__ import annotations

import schemas
from datapath.netlink.devices import Netlink


def refuse_unrouted(nl: Netlink, m: schemas.Materialize, uplink_index: int, uplink: str) -> None:
    """Refuse (`unsupported`, naming the endpoint's remote) a remote that the box's routes
    do not send through the uplink: its VTEP is bound to no device (create_vtep), so its
    frames would leave by another way, past the classifier, or not at all; a flow entry's frame
    would leave by the uplink toward a next hop that is not there. One route lookup per
    distinct remote address (a box has a few hypervisors, not one per link)."""
    seen: set[str] = set()
    for i, link in enumerate(m.links):
        for j, ep in enumerate(link.endpoints):
            if ep.remote in seen:
                continue
            seen.add(ep.remote)
            dev = nl.route_device(ep.remote)
            if dev == uplink_index:
                continue
            why = ("the box has no route to it" if dev is None else
                   f"the box's routes send it through {nl.name_of(dev)!r}")
            raise schemas.InvalidMessage(
                f"links[{i}].endpoints[{j}].remote",
                f"remote {ep.remote}: {why}, not the uplink {uplink!r}, so the "
                "link's frames would not pass moa's classifier", code="unsupported")
