"""The upload batcher (``fl_core.coordinator.batch.Batcher``, used on PostgreSQL): the
items submitted while a batch runs form the next one, each caller gets its own item's
answer, and a failure never leaves a caller waiting. No services: the batch function is
plain Python, run in a real worker thread (as a batch awaits its statements)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from fl_core.coordinator.batch import Batcher


def _run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_items_arriving_together_share_a_batch_and_keep_their_own_answers() -> None:
    release = threading.Event()
    seen: list[list[int]] = []

    def run(items: list[int]) -> list[object]:
        seen.append(items)
        release.wait(5)  # the first batch runs until the others have been submitted
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]

    async def main() -> list[object]:
        batcher: Batcher[int, int] = Batcher(
            lambda items: asyncio.to_thread(run, items), parallel=1
        )
        tasks = [asyncio.ensure_future(batcher.submit(0))]
        await asyncio.sleep(0.2)  # the first batch is running (and waits)
        tasks += [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 8)]
        await asyncio.sleep(0.2)
        release.set()
        out = await asyncio.gather(*tasks, return_exceptions=True)
        assert batcher.largest == 7 and batcher.batches == 2
        return out

    out = _run(main())
    assert seen == [[0], [1, 2, 3, 4, 5, 6, 7]]
    assert [o if isinstance(o, int) else str(o) for o in out] == [  # type: ignore[attr-defined]
        0, "odd 1", 20, "odd 3", 40, "odd 5", 60, "odd 7"
    ]


def test_a_batch_that_fails_fails_its_own_callers_only() -> None:
    def run(items: list[int]) -> list[object]:
        if 3 in items:
            raise ConnectionError("database gone")
        return list(items)

    async def main() -> tuple[object, object]:
        batcher: Batcher[int, int] = Batcher(lambda items: asyncio.to_thread(run, items))
        with pytest.raises(ConnectionError):
            await batcher.submit(3)
        return await batcher.submit(4), batcher.batches

    assert _run(main()) == (4, 2)


def test_a_batch_with_a_wrong_number_of_answers_leaves_no_caller_waiting() -> None:
    async def main() -> None:
        batcher: Batcher[int, int] = Batcher(lambda items: asyncio.to_thread(list, []))
        with pytest.raises(RuntimeError, match="returned 0 results"):
            await asyncio.wait_for(batcher.submit(1), 5)

    _run(main())
