"""What the engine client (moa_bus/engine.py) does about NATS's message size (docs/contract.md,
"Sizes"): get a whole box's status page by page and put the pages together, and send a document
larger than the server's max_payload through the service's object store, named by the
Moa-Object header.

Both take the request itself as a function (`ask`), so that what a request may end in (no
responder, a timeout, a 503) stays the engine client's to say.
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from nats.aio.client import Client
from nats.js.api import ObjectMeta, ObjectMetaOptions

from moa_bus.service.subjects import OBJECT_HEADER, Subjects

HEADROOM = 4096  # bytes of a message left for the protocol line and headers
OBJECT_CHUNK = 128 * 1024  # the object store's usual chunk, when max_payload allows it
RESTARTS = 3  # walks of the pages begun again when a cursor's snapshot expired meanwhile


class _Reply(Protocol):
    @property
    def json(self) -> object: ...

    @property
    def is_error(self) -> bool: ...


R = TypeVar("R", bound=_Reply)
T = TypeVar("T")


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
                        held[-1]["directions"] = (held[-1].get("directions", [])
                                                  + link.get("directions", []))
                    else:
                        held.append(link)
            else:
                mats.append({**m, "links": list(m["links"])})
    out["materializations"] = mats
    out["next"] = None
    return out


async def whole_status(ask: Callable[[bytes], Awaitable[R]], mid: str | None) -> dict | R:
    """Every page of `moa.<host>.status` (one materialization when `mid`) through
    `ask(body) -> reply`: the merged StatusReply as a dict, or the first error reply. A walk
    whose cursor expired between two pages is begun again (RESTARTS times at most)."""
    reply: R | None = None
    for _ in range(RESTARTS):
        pages: list[dict] = []
        cursor = None
        while True:
            body: dict[str, str] = {}
            if mid is not None:
                body["id"] = mid
            if cursor is not None:
                body["cursor"] = cursor
            reply = await ask(json.dumps(body).encode())
            obj = reply.json
            if reply.is_error or not isinstance(obj, dict):
                err = obj.get("error") if isinstance(obj, dict) else None
                if cursor is not None and isinstance(err, dict) and err.get("field") == "cursor":
                    break  # the snapshot expired between two pages: walk again
                return reply
            pages.append(obj)
            cursor = obj.get("next")
            if cursor is None:
                return merge_pages(pages)
    assert reply is not None
    return reply


def fits(nc: Client, data: bytes) -> bool:
    """Whether `data` goes as one message on this connection's server."""
    return len(data) <= nc.max_payload - HEADROOM


async def put_document(nc: Client, subjects: Subjects, op: str, data: bytes) -> str:
    """Put `data` in the service's object store under a new name (returned), in chunks that are
    each one message."""
    store = await nc.jetstream().object_store(subjects.docs)
    name = f"{op}-{nc.new_inbox().rsplit('.', 1)[-1]}"
    chunk = min(OBJECT_CHUNK, nc.max_payload - HEADROOM)
    await store.put(name, data, meta=ObjectMeta(
        name=name, options=ObjectMetaOptions(max_chunk_size=chunk)))
    return name


async def send_document(nc: Client, subjects: Subjects, op: str, data: bytes,
                        headers: dict[str, str] | None,
                        ask: Callable[[bytes, dict[str, str] | None], Awaitable[T]],
                        unread: Callable[[T], bool] = lambda _: False) -> T:
    """`ask(body, headers)` with `data` as the body; a body larger than one message is put in
    the object store first and named by the Moa-Object header of an empty body (the service
    deletes it once it has answered). The document is deleted here when the service did not
    take it: `unread(reply)` (a `busy` answer), or `ask` failed other than by a timeout (after
    a timeout the service may still read it)."""
    if fits(nc, data):
        return await ask(data, headers)
    name = await put_document(nc, subjects, op, data)
    try:
        reply = await ask(b"", {**(headers or {}), OBJECT_HEADER: name})
    except TimeoutError:
        raise
    except BaseException:
        await _delete(nc, subjects, name)
        raise
    if unread(reply):
        await _delete(nc, subjects, name)
    return reply


async def _delete(nc: Client, subjects: Subjects, name: str) -> None:
    with contextlib.suppress(Exception):  # it may be gone already
        store = await nc.jetstream().object_store(subjects.docs)
        await store.delete(name)

