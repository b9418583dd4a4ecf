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

Refusing an upload still costs its body: an HTTP/1.1 client sends the whole body before it
reads the answer (httpx has no ``Expect: 100-continue``), and the server reads and
discards it. With a thousand clients refused at once that is a thousand bodies sent for
nothing, and the 503s reach the clients only after: measured with 1,000 dense 622 KB
uploads on 127.0.0.1, the refused clients read their 503 up to 25 s after it was sent and
the coordinator idled meanwhile (17 uploads/s against 100 at 100 clients). So a client with
a large update first asks for an **upload turn** (``POST .../turn``, signed, empty body):
the turn is granted if a place in slots + queue is free (it holds that place for
``TURN_S`` seconds) or refused with the same 503 + ``Retry-After``, which costs a few
hundred bytes. A ``PUT`` from a client holding a turn is admitted without the check. A
``PUT`` without a turn is admitted as before (small updates skip the turn: a refused small
body costs little).

A turn request may instead wait for a place (``POST .../turn?wait=S``, :meth:`wait_turn`):
it is authenticated and held, and each upload that finishes gives its place to the request
waiting longest, before any later arrival. Refused clients come back at their booked time
times a jitter, early or late: early ones are refused again, late ones leave places idle.
A held request is there when the place frees. Measured on PostgreSQL with 1,000 dense
622 KB uploads at once: 3,900-4,100 busy answers a run and 75-110 uploads/s with
refusals, none and 114-164 uploads/s with waiting turn requests, the same peak RSS. At most
``waiting_turns`` wait at once (a connection and headers each; setting
``max_waiting_turns``, default 1,024); beyond, or after ``S`` seconds, the request gets the
booked 503 as above.

Small uploads have a waiting allowance of their own (``small_queue``, from
``max_queued_small_uploads``; default 1,024): an upload that declares at most
``SMALL_UPLOAD_BYTES`` (64 KiB) and holds no turn waits for a slot as long as fewer than
``small_queue`` small uploads are admitted, whatever the other places hold. Refusing such an
upload saves no memory, since the server reads (and discards) its body anyway, and each
waiting one holds at most that body. It only sends the client away to come back and send it
again. Measured with 1,000 top-k+q8 clients (35 KB updates) at once: 91 uploads/s with 864
refusals, and 166 uploads/s with none once they may wait; the coordinator's peak RSS was the
same, 198 and 196 MB. Beyond the allowance, small uploads are counted like the others.

``Retry-After`` is a reservation, not a constant: the refused clients are booked one after
the other at the coordinator's service rate, behind the uploads already admitted, so with
a thousand clients each is refused a few times instead of every second. The service rate
is ``slots`` over the mean time an upload held its slot (the last ``RATE_SAMPLES``
uploads): what the coordinator can do, not how fast uploads happened to arrive (booked
clients arrive at the booked rate, so an arrival rate never rises above a low first
guess). With few uploads in the slots the estimate is optimistic, which corrects itself:
a client back too early is refused again, cheaply, the slots fill and the hold times grow.
Clients add jitter, waiting ``Retry-After`` times ``U(1, 2)``, so the value sent is the
booked delay divided by 1.5 (they arrive around their turn on average); it is at least
``retry_after_s`` and at most ``MAX_RETRY_AFTER_S``.

The response to a refused upload does not close the connection: the server discards the
rest of the body and the client reads the 503 once it has sent it (a client cut off while
sending would see a broken pipe instead of the status and its Retry-After).

Turns live in this process's memory (one admission per coordinator process, like the
slots). The client id a ``PUT`` names is checked against its turn before authentication
(a refusal must stay cheap): a forged ``X-FL-Client`` can at most use a turn while the
forged request lasts (a turn serves one request at a time and is given back if that
request fails authentication), never admit more than slots + queue.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

from fl_core.coordinator.registry import ProtocolError

__all__ = [
    "MAX_RETRY_AFTER_S",
    "RATE_SAMPLES",
    "SMALL_UPLOAD_BYTES",
    "TURN_S",
    "WAITING_TURNS",
    "Busy",
    "UploadAdmission",
]

MAX_RETRY_AFTER_S = 120
"""The longest ``Retry-After`` given, in seconds."""
RATE_SAMPLES = 64
"""The slot hold times of this many recent uploads estimate the service rate."""
TURN_S = 60.0
"""How long a granted upload turn holds its place (the ``PUT`` must start by then)."""
WAITING_TURNS = 1024
"""Turn requests held at once waiting for a place (``POST .../turn?wait=S``); beyond, 503 at
once. A waiting one is a connection and a request with no body: a few KB each. The default
of the setting ``max_waiting_turns``."""
SMALL_UPLOAD_BYTES = 64 * 1024
"""An upload declaring at most this many bytes is small (uvicorn reads up to 64 KiB of a
body before flow control pauses the connection; the agent asks for a turn from 64 KiB on)."""


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
    small_queue
        Small uploads (see :data:`SMALL_UPLOAD_BYTES`) admitted on their own allowance,
        beyond ``slots + queue`` (>= 0; 0 counts them like the others).
    retry_after_s
        The shortest ``Retry-After`` a refused client is given, in whole seconds (>= 1).
    waiting_turns
        Turn requests that may wait for a place at once (:meth:`wait_turn`, >= 0).
    clock
        Monotonic seconds (tests may pass their own).
    """

    def __init__(
        self,
        *,
        slots: int,
        queue: int,
        retry_after_s: int,
        small_queue: int = 0,
        waiting_turns: int = WAITING_TURNS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        if queue < 0:
            raise ValueError(f"queue must be >= 0, got {queue}")
        if small_queue < 0:
            raise ValueError(f"small_queue must be >= 0, got {small_queue}")
        if retry_after_s < 1:
            raise ValueError(f"retry_after_s must be >= 1, got {retry_after_s}")
        if waiting_turns < 0:
            raise ValueError(f"waiting_turns must be >= 0, got {waiting_turns}")
        self.slots = slots
        self.queue = queue
        self.small_queue = small_queue
        self.retry_after_s = retry_after_s
        self._free = asyncio.Semaphore(slots)
        self._admitted = 0
        self._small = 0  # small uploads admitted on their own allowance
        self._clock = clock
        self._holds: deque[float] = deque(maxlen=RATE_SAMPLES)  # recent slot hold times
        self._turns: dict[str, tuple[float, bool]] = {}  # client -> (expires, in use)
        self._booked_until = 0.0  # when the last refused client was told to come back
        self.waiting_turns = waiting_turns
        self._waiters: dict[str, asyncio.Future[float]] = {}  # turn requests, oldest first
        self._expiry_timer: asyncio.TimerHandle | None = None
        self.refused = 0
        """How many uploads and turns were refused so far (for logs and tests)."""

    def rate(self) -> float:
        """Uploads the coordinator can complete per second: ``slots`` over the mean slot
        hold time of the last ``RATE_SAMPLES`` uploads (finished or refused after
        admission alike: both used the slot). Before ``2 * slots`` uploads have held one,
        an optimistic ``16 * slots`` a second (a client back too early is refused again,
        cheaply; one told to wait too long leaves the coordinator idle)."""
        if len(self._holds) < min(2 * self.slots, RATE_SAMPLES):
            return 16.0 * self.slots
        mean_hold = sum(self._holds) / len(self._holds)
        return self.slots / max(mean_hold, 1e-6)

    def _retry_after(self) -> int:
        """Book the next free turn: after the backlog and the clients refused before."""
        now = self._clock()
        rate = self.rate()
        backlog = self.occupied + self._small + len(self._waiters)  # the line goes first
        start = max(self._booked_until, now + backlog / rate)
        self._booked_until = start + 1.0 / rate
        wait = math.floor((self._booked_until - now) / 1.5)  # clients wait U(1, 2) x this
        return int(min(MAX_RETRY_AFTER_S, max(self.retry_after_s, wait)))

    def _refuse(self, what: str) -> Busy:
        self.refused += 1
        wait = self._retry_after()
        return Busy(
            f"{what}: {self._admitted} uploads in flight or queued and {len(self._turns)} "
            f"turns granted (limit {self.slots} + {self.queue}); retry after {wait} s",
            retry_after_s=wait,
        )

    @property
    def admitted(self) -> int:
        """Uploads in flight or waiting for a slot now (small ones included)."""
        return self._admitted + self._small

    @property
    def occupied(self) -> int:
        """Places taken: uploads admitted plus turns granted and not yet used or expired
        (a turn whose request is being admitted is counted once, as that upload)."""
        now = self._clock()
        for client in [c for c, (expires, used) in self._turns.items() if expires < now]:
            if not self._turns[client][1]:
                del self._turns[client]
        return self._admitted + sum(1 for _, used in self._turns.values() if not used)

    def grant_turn(self, client_id: str) -> float:
        """Hold a place for ``client_id``'s next upload for ``TURN_S`` seconds (returned);
        :class:`Busy` when slots + queue are taken. Granting again renews the turn."""
        self.check_room(client_id)
        in_use = self._turns.get(client_id, (0.0, False))[1]
        self._turns[client_id] = (self._clock() + TURN_S, in_use)
        return TURN_S

    @property
    def waiting(self) -> int:
        """Turn requests waiting for a place now."""
        return len(self._waiters)

    def can_wait(self) -> bool:
        """Whether one more turn request may wait for a place (:meth:`wait_turn`)."""
        return self.waiting < self.waiting_turns

    async def wait_turn(self, client_id: str, timeout_s: float) -> float:
        """:meth:`grant_turn`, waiting up to ``timeout_s`` for a place when none is free:
        places go to the waiting requests in arrival order as uploads finish or turns
        expire, before any request arriving later. :class:`Busy` (with a booked
        ``Retry-After``) when :meth:`can_wait` is false, when a request of the same client
        waits already (one client cannot fill the line), or when the time is up. A waiter
        cancelled (its client gone) after it was granted gives the place on."""
        if self._waiters:  # places freed meanwhile go to those waiting longer
            self._wake()
        if client_id in self._turns or self.occupied < self.slots + self.queue:
            return self.grant_turn(client_id)
        if not self.can_wait():
            raise self._refuse("no upload turn free and too many waiting")
        if client_id in self._waiters:
            raise self._refuse("a turn request of this client is waiting already")
        granted: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiters[client_id] = granted
        self._watch_expiries()
        try:
            async with asyncio.timeout(timeout_s):
                return await granted
        except TimeoutError:
            if granted.done() and not granted.cancelled():
                return granted.result()  # granted as the time ran out
            raise self._refuse("no upload turn freed in time") from None
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():  # granted to a request now gone
                self._turns.pop(client_id, None)
                self._wake()
            raise
        finally:
            if self._waiters.get(client_id) is granted:  # timed out or gone
                del self._waiters[client_id]

    def _wake(self) -> None:
        """Give the places free now to the turn requests waiting longest."""
        while self._waiters and self.occupied < self.slots + self.queue:
            client_id = next(iter(self._waiters))
            granted = self._waiters.pop(client_id)
            if not granted.done():  # else timing out or cancelled at this moment
                self._turns[client_id] = (self._clock() + TURN_S, False)
                granted.set_result(TURN_S)

    def _watch_expiries(self) -> None:
        """While requests wait, wake them when the next unused turn expires (its place is
        free then, though no upload finished)."""
        if self._expiry_timer is not None or not self._waiters:
            return
        unused = [expires for expires, used in self._turns.values() if not used]
        if not unused:
            return  # the places are uploads: each wakes the line when it finishes
        delay = min(max(min(unused) - self._clock(), 0.0), TURN_S) + 0.01

        def expired() -> None:
            self._expiry_timer = None
            self._wake()
            self._watch_expiries()

        self._expiry_timer = asyncio.get_running_loop().call_later(delay, expired)

    def check_room(self, client_id: str) -> None:
        """:class:`Busy` unless a turn could be granted to ``client_id`` now (it holds one
        already, or slots + queue have a free place); the turn route checks this before
        authentication (unless the request may wait), so a refusal costs no database
        work."""
        if self._waiters:  # a place freed by an expired turn goes to them first
            self._wake()
        if client_id not in self._turns and self.occupied >= self.slots + self.queue:
            raise self._refuse("no upload turn free")

    def has_turn(self, client_id: str) -> bool:
        """Whether ``client_id`` holds a live turn no request is using."""
        turn = self._turns.get(client_id)
        return turn is not None and not turn[1] and turn[0] >= self._clock()

    @contextmanager
    def admit(
        self, client_id: str | None = None, *, length: int | None = None
    ) -> Iterator[Callable[[], None]]:
        """Count an upload in (in flight or queued) for the body of the ``with``;
        :class:`Busy` when full, unless ``client_id`` (as the request names it, not yet
        authenticated) holds a free turn: the upload then takes the turn's place, or the
        upload is small (``length``, its declared length, at most ``SMALL_UPLOAD_BYTES``)
        and fewer than ``small_queue`` small ones are admitted. Yields
        ``authenticated()``, to call once the request is authenticated: the turn is
        spent then; if the request fails before, the turn is given back."""
        holder = client_id if client_id is not None and self.has_turn(client_id) else None
        expires = 0.0
        small = (
            holder is None
            and length is not None
            and 0 <= length <= SMALL_UPLOAD_BYTES
            and self._small < self.small_queue
        )
        if holder is not None:
            expires, _ = self._turns[holder]
            self._turns[holder] = (expires, True)  # one request at a time on a turn
        elif not small:
            if self._waiters:  # a place freed by an expired turn goes to the line first
                self._wake()
            if self.occupied >= self.slots + self.queue:
                raise self._refuse("upload refused")
        spent = False

        def authenticated() -> None:
            nonlocal spent
            if holder is not None and not spent:
                spent = True
                self._turns.pop(holder, None)

        if small:
            self._small += 1
        else:
            self._admitted += 1
        try:
            yield authenticated
        finally:
            if small:
                self._small -= 1
            else:
                self._admitted -= 1
            if holder is not None and not spent and holder in self._turns:
                self._turns[holder] = (expires, False)  # given back
            if self._waiters:
                self._wake()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Wait for one of the ``slots`` and hold it for the body of the ``async with``
        (inside :meth:`admit`; a request is authenticated before it waits here, so its
        signed timestamp is checked when it arrives, not after its wait)."""
        async with self._free:
            start = self._clock()
            try:
                yield
            finally:
                self._holds.append(self._clock() - start)
