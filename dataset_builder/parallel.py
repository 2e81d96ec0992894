"""Order-preserving, memory-bounded parallel map used by the build (analysis and image encoding).

``multiprocessing.Pool.imap`` reads its whole input ahead in a feeder thread and buffers every result
the consumer has not taken yet; :func:`bounded_map` keeps at most ``window`` chunks in flight, so a
streaming build stays streaming, and yields results in input order, so the build is deterministic
whatever ``num_proc`` is.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def make_pool(num_proc: int):
    """A pool of ``num_proc`` fresh interpreters (``spawn``: safe after pyarrow / torch started threads),
    or ``None`` for ``num_proc <= 1``. Use it as a context manager."""
    if int(num_proc) <= 1:
        return None
    return multiprocessing.get_context("spawn").Pool(int(num_proc))


def _apply_chunk(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    return [fn(item) for item in items]


def bounded_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    pool=None,
    *,
    remote: Callable[[T], bool] | None = None,
    arg: Callable[[T], Any] | None = None,
    chunk: int = 8,
    window: int | None = None,
) -> Iterator[tuple[T, R]]:
    """``(item, fn(arg(item)))`` in input order (``arg`` default: the item itself, which is what is
    pickled to a worker); ``fn`` (a module-level function) runs in ``pool`` for items where
    ``remote(item)`` is true (default all), in this process for the others and when ``pool`` is
    ``None``. At most ``window`` chunks (default 4 per worker) are in flight."""
    arg = arg or (lambda item: item)
    if pool is None:
        for item in items:
            yield item, fn(arg(item))
        return

    def submit(batch: list[T]):
        return pool.apply_async(_apply_chunk, (fn, [arg(i) for i in batch]))

    window = window or 4 * getattr(pool, "_processes", 2)
    # queue entries: (items, async result or None for items computed here)
    queue: deque[tuple[list[T], Any]] = deque()
    local: list[T] = []
    batch: list[T] = []

    def drain(limit: int) -> Iterator[tuple[T, R]]:
        while len(queue) > limit:
            chunk_items, pending = queue.popleft()
            results = pending.get() if pending is not None else [fn(arg(i)) for i in chunk_items]
            yield from zip(chunk_items, results)

    for item in items:
        if remote is None or remote(item):
            if local:
                queue.append((local, None))
                local = []
            batch.append(item)
            if len(batch) >= chunk:
                queue.append((batch, submit(batch)))
                batch = []
        else:
            if batch:
                queue.append((batch, submit(batch)))
                batch = []
            local.append(item)
            if len(local) >= chunk:
                queue.append((local, None))
                local = []
        yield from drain(window)
    if batch:
        queue.append((batch, submit(batch)))
    if local:
        queue.append((local, None))
    yield from drain(0)


__all__ = ["bounded_map", "make_pool"]
