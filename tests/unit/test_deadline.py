"""Bounds on a whole exchange: an await bounded by `within` keeps the cancel of the task
that waits (asyncio.wait_for on Python 3.10 and 3.11 drops one that comes in the step the
awaited thing finishes: a health watch told to stop probed on for good)."""

from __future__ import annotations

import asyncio
import sys

import pytest

from jlservice.deadline import within


@pytest.mark.skipif(sys.version_info < (3, 11), reason="3.10 has no asyncio.timeout to keep it")
def test_a_cancel_in_the_step_the_answer_comes_is_kept():
    async def main() -> str:
        answer = asyncio.get_running_loop().create_future()

        async def watch() -> str:
            await within(5, answer)
            await asyncio.sleep(0.1)  # the next round of a watch that was told to stop
            return "went on"

        watcher = asyncio.ensure_future(watch())
        await asyncio.sleep(0)  # the watch waits for its answer
        answer.add_done_callback(lambda _: watcher.cancel())  # a stop, in that same step
        answer.set_result(200)
        return await watcher

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(main())


def test_a_bound_that_runs_out_raises_timeout():
    async def main() -> None:
        await within(0.05, asyncio.sleep(5))

    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(main())
