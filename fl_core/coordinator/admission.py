"""Admission control for uploads: a bounded number in flight, a bounded queue, then 503.

An upload holds memory while its body is read and checked, and each connection waiting to
be read holds what the server already buffered of its body (uvicorn reads up to its flow
control high-water mark, 64 KiB plus one socket read, before pausing). So the coordinator's
memory stays flat in the number of clients only if both are bounded:

* at most ``slots`` uploads are past admission (authenticated, body streamed and checked);
* at most ``queue`` more wait for a slot, unread;
* any further upload is refused at once with ``503 Service Unavailable`` and
  ``Retry-After: <seconds>``, before authentication or any database work, so a refusal
  costs almost nothing. Clients retry after that delay (the agent's
  :class:`~fl_core.agent.transport.CoordinatorClient` does, with jitter); a refused upload
  was never stored, so its retry is a first upload, not a replay.

``Retry-After`` is a reservation, not a constant: the refused clients are booked one after
the other at the rate uploads have been completing (over the last ``RATE_WINDOW_S``
seconds), behind the uploads already admitted, so with a thousand clients each is refused a
few times instead of every second (every refusal still costs reading and discarding its
body). Clients add jitter, waiting ``Retry-After`` times ``U(1, 2)``, so the value sent is
the booked delay divided by 1.5 (they arrive around their turn on average); it is at least
``retry_after_s`` and at most ``MAX_RETRY_AFTER_S``.

The response to a refused upload does not close the connection: the server discards the
rest of the body and the client reads the 503 once it has sent it (a client cut off while
sending would see a broken pipe instead of the status and its Retry-After).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

from fl_core.coordinator.registry import ProtocolError

__all__ = ["MAX_RETRY_AFTER_S", "RATE_WINDOW_S", "Busy", "UploadAdmission"]

MAX_RETRY_AFTER_S = 120
"""The longest ``Retry-After`` given, in seconds."""
RATE_WINDOW_S = 20.0
"""Completions over this many recent seconds estimate the upload rate."""


class Busy(ProtocolError):
    """503: too many uploads in flight; retry after ``retry_after_s`` seconds."""

    def __init__(self, reason: str, *, retry_after_s: int) -> None:
        super().__init__(503, reason)
        self.retry_after_s = retry_after_s


class UploadAdmission:
    """At most ``slots`` uploads in flight and ``queue`` waiting; the rest get :class:`Busy`.

    One instance per app, used from its event loop only (the counters need no lock).

    Parameters
    ----------
    slots
        Uploads processed at once (>= 1).
    queue
        Uploads allowed to wait for a slot (>= 0).
    retry_after_s
        The shortest ``Retry-After`` a refused client is given, in whole seconds (>= 1).
    clock
        Monotonic seconds (tests may pass their own).
    """

    def __init__(
        self,
        *,
        slots: int,
        queue: int,
        retry_after_s: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        if queue < 0:
            raise ValueError(f"queue must be >= 0, got {queue}")
        if retry_after_s < 1:
            raise ValueError(f"retry_after_s must be >= 1, got {retry_after_s}")
        self.slots = slots
        self.queue = queue
        self.retry_after_s = retry_after_s
        self._free = asyncio.Semaphore(slots)
        self._admitted = 0
        self._clock = clock
        self._done: deque[float] = deque()  # completion times within RATE_WINDOW_S
        self._booked_until = 0.0  # when the last refused client was told to come back
        self.refused = 0
        """How many uploads were refused so far (for logs and tests)."""

    def rate(self) -> float:
        """Uploads completed per second recently; before enough have completed to tell,
        an optimistic ``4 * slots`` a second (a client back too early is refused again,
        cheaply; one told to wait too long leaves the coordinator idle)."""
        now = self._clock()
        while self._done and self._done[0] < now - RATE_WINDOW_S:
            self._done.popleft()
        if len(self._done) < 2 * self.slots:
            return 4.0 * self.slots
        return len(self._done) / max(now - self._done[0], 1.0)

    def _retry_after(self) -> int:
        """Book the next free turn: after the backlog and the clients refused before."""
        now = self._clock()
        rate = self.rate()
        start = max(self._booked_until, now + self._admitted / rate)
        self._booked_until = start + 1.0 / rate
        wait = math.floor((self._booked_until - now) / 1.5)  # clients wait U(1, 2) x this
        return int(min(MAX_RETRY_AFTER_S, max(self.retry_after_s, wait)))

    @property
    def admitted(self) -> int:
        """Uploads in flight or waiting for a slot now."""
        return self._admitted

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Count an upload in (in flight or queued) for the body of the ``with``;
        :class:`Busy` when full. Take its slot with :meth:`slot` inside."""
        if self._admitted >= self.slots + self.queue:
            self.refused += 1
            wait = self._retry_after()
            raise Busy(
                f"{self._admitted} uploads in flight or queued (limit "
                f"{self.slots} + {self.queue}); retry after {wait} s",
                retry_after_s=wait,
            )
        self._admitted += 1
        try:
            yield
        finally:
            self._admitted -= 1

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Wait for one of the ``slots`` and hold it for the body of the ``async with``
        (inside :meth:`admit`; a request is authenticated before it waits here, so its
        signed timestamp is checked when it arrives, not after its wait)."""
        async with self._free:
            yield
            self._done.append(self._clock())
