"""Workers that leave at the end of their lifetime without repeating work.

A batch job has a time limit; a worker that Slurm kills at it loses what it was doing.
Dask's ``dask worker --lifetime 230m --lifetime-stagger 4m`` makes the worker leave
before, and an adaptive cluster submits a replacement job; but it leaves at once: the
task it is running is run again elsewhere, and the results it holds are computed again
when no other worker can take them. A chunk of dagflow's items would then be read,
processed and written twice.

:class:`RetiringWorker` (``dask worker --worker-class dagflow.runtime.retire.RetiringWorker``)
leaves differently when its lifetime ends: it stops taking tasks (Dask's own
``closing_gracefully`` state, which the scheduler honours), lets the tasks it runs
finish, and retires: its results go to other workers, the tasks it had been given but
not started too. Where no other worker can take its results (it is the last one, or the
others are leaving too) it goes back to work and tries again every :data:`RETRY`
seconds, as a replacement joins meanwhile, for at most :data:`HANDOVER_WAIT` seconds;
then it leaves as Dask's worker would. Every other way of closing is Dask's own.

Give the lifetime a margin below the job's time limit: the stagger, the longest task,
and :data:`HANDOVER_WAIT`. A task that never ends keeps its worker until the limit
(dagflow's per-item ``timeout`` ends items that hang).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from time import time
from typing import Any

from distributed import Worker
from distributed.core import Status

__all__ = ["HANDOVER_WAIT", "RETRY", "RetiringWorker", "finish_and_hand_over"]

logger = logging.getLogger(__name__)

#: Seconds between attempts to hand the worker's results over.
RETRY = 2.0
#: Seconds after a declined retirement during which the worker insists on taking tasks.
REVERT_WINDOW = 0.5
#: Seconds the worker keeps trying to hand its results over before it leaves anyway.
HANDOVER_WAIT = 60.0
#: The reason Dask gives when a worker's ``--lifetime`` ends.
END_OF_LIFETIME = "worker-lifetime-reached"


class RetiringWorker(Worker):
    """A Dask worker that finishes its tasks and hands its results over when its
    lifetime ends (see the module's description)."""

    async def close_gracefully(self, restart: bool | None = None,
                               reason: str = "worker-close-gracefully") -> None:
        if reason != END_OF_LIFETIME or self.status not in (Status.running, Status.paused):
            return await super().close_gracefully(restart=restart, reason=reason)
        logger.info("worker %s: its lifetime ends; finishing %d running task(s), taking no "
                    "new one", self.address, len(self.state.executing))
        await finish_and_hand_over(self)
        if restart is None:
            restart = self.lifetime_restart
        await self.close(nanny=not restart, reason=reason)


async def finish_and_hand_over(worker: Any, *, poll: float = 0.05) -> bool:
    """Stop taking tasks, let the running ones finish, retire from the scheduler.

    Returns
    -------
    bool
        Whether the scheduler retired the worker (its results handed over), rather than
        :data:`HANDOVER_WAIT` running out.
    """
    begin = time()
    while True:
        if worker.status in (Status.closing, Status.closed, Status.failed):
            return False  # closed meanwhile (the nanny, the scheduler)
        worker.status = Status.closing_gracefully  # the scheduler sends no new task
        while worker.state.executing or worker.state.long_running:
            await asyncio.sleep(poll)
        retired: dict = {}
        with contextlib.suppress(OSError):  # a scheduler already gone
            retired = await worker.scheduler.retire_workers(
                workers=[worker.address], close_workers=False, remove=True,
                stimulus_id=f"dagflow-retire-{time()}")
        if worker.address in retired:
            return True
        if time() - begin > HANDOVER_WAIT:
            return False
        logger.info("worker %s: no other worker can take its results yet; working on, "
                    "trying again in %.0f s", worker.address, RETRY)
        await _back_to_work(worker)
        await asyncio.sleep(RETRY)


async def _back_to_work(worker: Any, *, poll: float = 0.05) -> None:
    """Take tasks again after a retirement the scheduler declined.

    The scheduler restores the status the worker had (``closing_gracefully``) by a message
    that may arrive after this has set ``running``: insist for a moment. (Should it come
    later still, the worker idles until the next attempt; nothing runs twice.)
    """
    deadline = time() + REVERT_WINDOW
    while time() < deadline:
        if worker.status == Status.closing_gracefully:
            worker.status = Status.running
        await asyncio.sleep(poll)
