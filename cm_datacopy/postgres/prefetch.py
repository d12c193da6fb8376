"""Read ahead on a helper thread: the next batch is fetched and encoded while this one is written.

A chunk's three costs are Snowflake's network read, the encoding and PostgreSQL's COPY; in one thread
they take turns. ``Prefetch`` runs the first two on a helper thread that stays at most ``depth``
items ahead (a bounded queue, so memory stays at a few batches). The caller's thread keeps the COPY
and the transaction, so the rows and the ledger row still commit in one transaction.

The helper never outlives the ``with`` block: leaving it (normally, or by an error on either side)
tells the helper to stop, unblocks it, and joins it. Anything the helper raises (a lost connection,
a NUL byte refused, a deadline or stop check of the source iterable) is raised in the caller's thread
in place of the next item, with its own type and traceback. The helper closes the source iterable
itself, in its own thread, which releases the Snowflake cursor even when the caller stopped early.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_END = object()


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class Prefetch(Generic[T, R]):
    """Iterate ``work(item)`` for each item of ``source``, computed ahead on a helper thread.

    ``work`` returning None skips the item (an empty batch).
    """

    def __init__(self, source: Iterable[T], work: Callable[[T], R | None], depth: int = 2) -> None:
        self._source, self._work = source, work
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cm-datacopy-prefetch", daemon=True)

    def __enter__(self) -> Iterator[R]:
        self._thread.start()
        return self._items()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the helper and wait for it: it ends after its current fetch or encode."""
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):  # free a slot: a helper blocked on a full queue sees the stop
                self._queue.get(timeout=0.05)
        self._thread.join()

    def _items(self) -> Iterator[R]:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield item  # type: ignore[misc]

    def _put(self, item: object) -> bool:
        """Hand ``item`` over; False if the caller stopped meanwhile."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        iterator = iter(self._source)
        try:
            for element in iterator:
                if self._stop.is_set():
                    return
                result = self._work(element)
                if result is not None and not self._put(result):
                    return
            self._put(_END)
        except BaseException as exc:  # everything goes to the caller's thread, which decides
            self._put(_Failed(exc))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):  # the item's error, if any, is the one that matters
                    close()
