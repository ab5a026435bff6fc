"""libbpf's ring_buffer over a BPF_MAP_TYPE_RINGBUF map, read from the event loop.

``RingBuffer(map, callback)``
    ``callback(bytes)`` per record; ``fileno()`` (epoll fd), ``consume()``, ``poll(timeout_ms)``,
    ``attach(loop=None)`` (``loop.add_reader(fileno, consume)``), ``detach()``, ``close()``.
    An exception raised by the callback is re-raised from ``consume``/``poll``.
"""
from __future__ import annotations

import asyncio
import ctypes
import errno as errno_mod
from collections.abc import Callable

from datapath.libbpf.lib import BpfError, check, errno_error, libbpf
from datapath.libbpf.maps import Map, MapType

_c = ctypes
_vp = _c.c_void_p

# int (*ring_buffer_sample_fn)(void *ctx, void *data, size_t size)
_SAMPLE_FN = _c.CFUNCTYPE(_c.c_int, _c.c_void_p, _c.c_void_p, _c.c_size_t)


class RingBuffer:
    """libbpf ring_buffer over one BPF_MAP_TYPE_RINGBUF map (see the module docstring)."""

    def __init__(self, map: Map, callback: Callable[[bytes], None]) -> None:
        if map.type != MapType.RINGBUF:
            raise BpfError(f"map {map.name} is not a ring buffer (type {map.type})")
        self._map = map  # keeps the map (and its object) alive while the ring buffer is
        self._callback = callback
        self._errors: list[BaseException] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sample_cb = _SAMPLE_FN(self._on_sample)  # referenced for the lifetime of rb
        rb = libbpf().ring_buffer__new(map.fd, ctypes.cast(self._sample_cb, _vp), None, None)
        if not rb:
            raise errno_error(f"ring_buffer__new({map.name})", _c.get_errno() or errno_mod.EINVAL)
        self._rb: int | None = rb

    def _on_sample(self, _ctx: int, data: int, size: int) -> int:
        try:
            self._callback(ctypes.string_at(data, size))
        except BaseException as e:  # raised again by consume()/poll(), never into C
            self._errors.append(e)
        return 0

    def _raise_pending(self) -> None:
        if self._errors:
            first, self._errors = self._errors[0], []
            raise first

    def _require(self) -> int:
        if self._rb is None:
            raise BpfError("ring buffer is closed")
        return self._rb

    def fileno(self) -> int:
        return libbpf().ring_buffer__epoll_fd(self._require())

    def consume(self) -> int:
        """Read every available record now; returns how many were read."""
        n = libbpf().ring_buffer__consume(self._require())
        self._raise_pending()
        return check(n, "ring_buffer__consume")

    def poll(self, timeout_ms: int) -> int:
        """Wait up to timeout_ms for records and read them (blocks: not for the event loop)."""
        n = libbpf().ring_buffer__poll(self._require(), timeout_ms)
        self._raise_pending()
        if n == -errno_mod.EINTR:
            return 0
        return check(n, "ring_buffer__poll")

    def attach(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Consume whenever the epoll fd is readable, inside `loop` (default: the running one)."""
        if self._loop is not None:
            raise BpfError("ring buffer is already attached to a loop")
        loop = loop or asyncio.get_running_loop()
        loop.add_reader(self.fileno(), self.consume)
        self._loop = loop

    def detach(self) -> None:
        if self._loop is not None and self._rb is not None:
            self._loop.remove_reader(self.fileno())
        self._loop = None

    def close(self) -> None:
        self.detach()
        if self._rb is not None:
            libbpf().ring_buffer__free(self._rb)
            self._rb = None

    def __enter__(self) -> "RingBuffer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
