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

The response to a refused upload does not close the connection: the server discards the
rest of the body and the client reads the 503 once it has sent it (a client cut off while
sending would see a broken pipe instead of the status and its Retry-After).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fl_core.coordinator.registry import ProtocolError

__all__ = ["Busy", "UploadAdmission"]


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
        The ``Retry-After`` a refused client is given, in whole seconds (>= 1).
    """

    def __init__(self, *, slots: int, queue: int, retry_after_s: int) -> None:
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
        self.refused = 0
        """How many uploads were refused so far (for logs and tests)."""

    @property
    def admitted(self) -> int:
        """Uploads in flight or waiting for a slot now."""
        return self._admitted

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Hold a slot for the body of the ``async with``; :class:`Busy` when full."""
        if self._admitted >= self.slots + self.queue:
            self.refused += 1
            raise Busy(
                f"{self._admitted} uploads in flight or queued (limit "
                f"{self.slots} + {self.queue}); retry after {self.retry_after_s} s",
                retry_after_s=self.retry_after_s,
            )
        self._admitted += 1
        try:
            async with self._free:
                yield
        finally:
            self._admitted -= 1
