"""What a client does about NATS's message size (docs/contract.md, "Sizes"): get a whole box's
status page by page and put the pages together, and send a document larger than the server's
max_payload through the service's object store, named by the Moa-Object header.

`moa status`, `moa show` and `moa set` read the box with `whole_status`; `moa materialize`
sends with `send_document`. Both return a client.Reply, so exit statuses and printing stay
client.run_request's.
"""
from __future__ import annotations

import json

import nats.errors
from nats.aio.client import Client
from nats.js.api import ObjectMeta, ObjectMetaOptions

from moa_bus.cli.client import Reply, request
from moa_bus.service.subjects import OBJECT_HEADER, Subjects

HEADROOM = 4096  # bytes of a message left for the protocol line and headers
OBJECT_CHUNK = 128 * 1024  # the object store's usual chunk, when max_payload allows it
RESTARTS = 3  # walks of the pages begun again when a cursor's snapshot expired meanwhile


def merge_pages(pages: list[dict]) -> dict:
    """One StatusReply from its pages: a materialization (or a link) continued on the next page
    under the same id is put back together; the box-wide figures are the last page's."""
    out = dict(pages[-1])
    mats: list[dict] = []
    for page in pages:
        for m in page.get("materializations", []):
            if mats and mats[-1]["id"] == m["id"]:
                held = mats[-1]["links"]
                for link in m["links"]:
                    if held and held[-1]["id"] == link["id"]:  # a link cut by endpoint
                        held[-1]["vnis"] = held[-1]["vnis"] + link["vnis"]
                        held[-1]["counters"] = held[-1]["counters"] + link["counters"]
                    else:
                        held.append(link)
            else:
                mats.append({**m, "links": list(m["links"])})
    out["materializations"] = mats
    out["next"] = None
    return out


async def whole_status(nc: Client, subject: str, mid: str | None, timeout: float) -> Reply:
    """Every page of `moa.<host>.status` (one materialization when `mid`), as one reply: the
    merged StatusReply, or the first error reply. `timeout` is per page."""
    for _ in range(RESTARTS):
        pages: list[dict] = []
        cursor = None
        while True:
            body: dict[str, str] = {}
            if mid is not None:
                body["id"] = mid
            if cursor is not None:
                body["cursor"] = cursor
            reply = await request(nc, subject, json.dumps(body).encode(), timeout)
            obj = reply.json
            if reply.is_error or not isinstance(obj, dict):
                err = obj.get("error") if isinstance(obj, dict) else None
                if cursor is not None and isinstance(err, dict) and err.get("field") == "cursor":
                    break  # the snapshot expired between two pages: walk again
                return reply
            pages.append(obj)
            cursor = obj.get("next")
            if cursor is None:
                return Reply(json.dumps(merge_pages(pages)).encode(), None)
    return reply


def fits(nc: Client, data: bytes) -> bool:
    """Whether `data` goes as one message on this connection's server."""
    return len(data) <= nc.max_payload - HEADROOM


async def send_document(nc: Client, subjects: Subjects, subject: str, data: bytes,
                        timeout: float, headers: dict[str, str] | None = None) -> Reply:
    """A request with `data` as its body; a body larger than one message is put in the
    service's object store first and named by the Moa-Object header of an empty request (the
    service deletes it once it has answered)."""
    if fits(nc, data):
        return await request(nc, subject, data, timeout, headers)
    store = await nc.jetstream().object_store(subjects.docs)
    name = f"{subject.rsplit('.', 1)[-1]}-{nc.new_inbox().rsplit('.', 1)[-1]}"
    chunk = min(OBJECT_CHUNK, nc.max_payload - HEADROOM)  # a chunk is one message too
    await store.put(name, data, meta=ObjectMeta(
        name=name, options=ObjectMetaOptions(max_chunk_size=chunk)))
    try:
        return await request(nc, subject, b"", timeout, {**(headers or {}), OBJECT_HEADER: name})
    except nats.errors.NoRespondersError:
        await store.delete(name)  # nobody took it (after a timeout the service still may)
        raise
