"""The netlink worker: one thread, entered into the box's network namespace, that all netlink
work runs on.

pyroute2 cannot open netlink sockets inside a uvloop loop, and the thread is also where moa enters
the box's network namespace (setns affects only the calling thread), so netlink requests and
DEVMAP writes - whose ifindex the kernel resolves in the writer's namespace - both land in the
right namespace. `Netlink` (datapath/netlink/devices.py) is the synchronous API, valid only on
this thread; asyncio code awaits `NetlinkWorker.call(fn, *args)`.
"""
from __future__ import annotations

import asyncio
import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from pyroute2 import IPRoute

from datapath.netlink.devices import Netlink

T = TypeVar("T")

CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


def _enter_netns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def netns_path(netns: str | None) -> str | None:
    if netns is None:
        return None
    return netns if netns.startswith("/") else f"/var/run/netns/{netns}"


class NetlinkWorker:
    """One thread, in the box's network namespace, owning the IPRoute socket.

    `await call(fn, *args)` runs fn(*args) there; `run(fn, *args)` is the blocking form for
    code that is not on an event loop. fn may use `worker.nl` (the Netlink of that thread).
    """

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._path = netns_path(netns)
        self._nl: Netlink | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moa-netlink")
        self._executor.submit(self._start).result()

    def _start(self) -> None:
        if self._path is not None:
            _enter_netns(self._path)
        self._nl = Netlink(IPRoute(), self._path)

    @property
    def nl(self) -> Netlink:
        assert self._nl is not None
        return self._nl

    def on_thread(self) -> bool:
        return self._nl is not None and threading.get_ident() == self._nl._thread

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self.on_thread():
            return fn(*args, **kwargs)
        return self._executor.submit(fn, *args, **kwargs).result()

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    def close(self) -> None:
        if self._nl is not None:
            try:
                self._executor.submit(self._nl.ipr.close).result()
                self._nl.rtnl.close()
            finally:
                self._nl = None
        self._executor.shutdown(wait=True)
