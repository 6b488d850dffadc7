"""The run loop on its own: window, splitting, suspects, breakers, cancellation.

No cluster: chunks are made up, and so are their outcomes (the summaries a chunk's
commit returns, worker deaths), fed in the order a cluster could produce them.
"""

from __future__ import annotations

import collections

import pytest

from dagflow.compile import Chunk
from dagflow.execute import ChunkSummary
from dagflow.recovery.breaker import BreakerSettings, CircuitBreaker
from dagflow.recovery.records import Record
from dagflow.runtime.loop import RunLoop


def chunks(sizes: list[int]) -> list[Chunk]:
    out, next_id = [], 0
    for index, size in enumerate(sizes):
        out.append(Chunk(index, tuple({"item_id": next_id + k} for k in range(size))))
        next_id += size
    return out


def ids(chunk: Chunk) -> list[int]:
    return [i["item_id"] for i in chunk.items]


def record(item: int, node: str, status: str, error_class: str | None = None) -> Record:
    return Record("r", item, f"k{item}", f"/in/{item}", str(item), node, "nk", "op", status,
                  error_class=error_class, error_type="OSError" if error_class else None,
                  error_message="disk full" if error_class else None)


def summary(chunk: Chunk, *, failed: tuple[int, ...] = (), not_run: tuple[int, ...] = (),
            node: str = "save") -> ChunkSummary:
    """What the commit of ``chunk`` returns: ``failed`` items failed at ``node`` (a
    transient error, which counts against its breaker), ``not_run`` held back there."""
    status = {i: "failed" for i in failed} | {i: "not_run" for i in not_run}
    rows = [record(i, node, status.get(i, "ok"), "transient" if i in failed else None)
            for i in ids(chunk)]
    counts = collections.Counter((r.node_id, r.status) for r in rows)
    return ChunkSummary(chunk.index, len(chunk), dict(counts), status,
                        [r for r in rows if r.status == "failed"], None, 0.0)


def submitted(loop: RunLoop) -> list[Chunk]:
    """The chunks the loop submits now, whatever graphs they are grouped in."""
    return [c for graph in loop.next_graphs() for c in graph]


def finish_running(loop: RunLoop) -> None:
    for index, chunk in list(loop.running.items()):
        loop.finished(index, summary(chunk))


def breakers(failures: int = 3, cooldown: float = 5.0, clock=None) -> dict:
    settings = BreakerSettings(failures=failures, window=60, cooldown=cooldown)
    return {"save": CircuitBreaker("save", settings, clock=clock or (lambda: 0.0))}


def test_the_window_gives_the_first_chunks_then_tops_up_as_chunks_finish():
    loop = RunLoop(chunks([4] * 20), breakers(), window=8, first=4, graph_items=6)
    first = loop.next_graphs()
    # 4 chunks of 4 items, graphs of at most 6 items: one chunk per graph
    assert [[c.index for c in g] for g in first] == [[0], [1], [2], [3]]
    assert loop.next_graphs() == []  # nothing more before a chunk has come back
    loop.finished(0, summary(first[0][0]))
    # room for 5 of the 16 pending, in batches of window // 4 = 2
    assert [c.index for c in submitted(loop)] == [4, 5]
    assert sorted(loop.running) == [1, 2, 3, 4, 5]
    while not loop.done():
        finish_running(loop)
        loop.next_graphs()
    assert loop.not_run() == [] and loop.stopped is None


def test_the_reserve_follows_the_first_chunks_in_graphs_of_its_own():
    """One more chunk per thread goes with the first submission, after the first ones
    and never in their graphs, within the window; then nothing until a chunk is back."""
    loop = RunLoop(chunks([4] * 20), breakers(), window=8, first=4, reserve=2,
                   graph_items=8)
    first = loop.next_graphs()
    assert [[c.index for c in g] for g in first] == [[0, 1], [2, 3], [4, 5]]
    assert sorted(loop.running) == [0, 1, 2, 3, 4, 5]
    assert loop.next_graphs() == []
    loop.finished(0, summary(first[0][0]))
    assert [c.index for c in submitted(loop)] == [6, 7]  # the window is full again
    small = RunLoop(chunks([4] * 3), breakers(), window=4, first=2, reserve=5)
    assert [[c.index for c in g] for g in small.next_graphs()] == [[0, 1], [2]]
    tight = RunLoop(chunks([4] * 6), breakers(), window=3, first=2, reserve=2)
    assert [c.index for c in submitted(tight)] == [0, 1, 2]  # never beyond the window


def test_a_chunk_that_fails_as_a_whole_is_split_down_to_single_items():
    loop = RunLoop(chunks([4]), breakers(), first=1)
    (chunk,) = submitted(loop)
    assert loop.failed(chunk.index) is None and not loop.running
    assert [ids(c) for c in loop.pending] == [[0, 1], [2, 3]]
    halves = submitted(loop)
    assert [ids(c) for c in halves] == [[0, 1], [2, 3]]
    loop.failed(halves[0].index)
    loop.finished(halves[1].index, summary(halves[1]))
    singles = submitted(loop)
    assert [ids(c) for c in singles] == [[0], [1]]
    assert ids(loop.failed(singles[0].index)) == [0]  # one item: the caller records it
    assert loop.failed(singles[0].index) is None  # once


def test_an_item_whose_worker_died_runs_alone_at_the_end_and_only_then_is_convicted():
    loop = RunLoop(chunks([4, 4]), breakers(), first=2)
    loop.next_graphs()
    assert loop.worker_lost(0, 2, "poison", why="worker A died") is None
    assert 0 not in loop.running  # taken apart: the caller cancels it
    # the other items go on at once, first
    assert [ids(c) for c in loop.pending] == [[0, 1, 3]]
    (rest,) = submitted(loop)
    loop.finished(rest.index, summary(rest))
    assert loop.next_graphs() == []  # chunk 1 still runs: the suspect waits
    loop.finished(1, summary(Chunk(1, ({"item_id": 4},))))
    (alone,) = submitted(loop)
    assert ids(alone) == [2] and loop.alone
    assert loop.next_graphs() == []  # nothing beside it
    conviction = loop.worker_lost(alone.index, 2, "poison", why="worker B died",
                                  memory=True)
    assert conviction is not None and conviction.node == "poison" and conviction.memory
    assert [e["error"] for e in conviction.suspect.log] == ["worker A died", "worker B died"]
    assert loop.done() and loop.not_run() == []


def test_a_suspect_that_succeeds_alone_was_innocent_and_unknown_items_change_nothing():
    loop = RunLoop(chunks([3]), breakers(), first=1, alone_tries=2)
    loop.next_graphs()
    assert loop.worker_lost(0, None, "load", why="?") is None
    assert 0 in loop.running  # which item is unknown: Dask tries the task again
    loop.worker_lost(0, 1, "load", why="died")
    (rest,) = submitted(loop)
    loop.finished(rest.index, summary(rest))
    (alone,) = submitted(loop)
    # two deaths alone are needed here: the first sends it back to run alone again
    assert loop.worker_lost(alone.index, 1, "load", why="died alone") is None
    (again,) = submitted(loop)
    assert ids(again) == [1]
    loop.finished(again.index, summary(again))  # it ran: innocent
    assert loop.done() and not loop.alone and not loop.suspects


def test_with_no_tries_alone_a_worker_death_convicts_at_once():
    loop = RunLoop(chunks([2]), breakers(), first=1, alone_tries=0)
    loop.next_graphs()
    conviction = loop.worker_lost(0, 0, "n", why="died")
    assert conviction is not None and conviction.suspect.item == {"item_id": 0}


def test_an_open_breaker_holds_items_back_probes_after_the_cooldown_and_closes():
    now = [0.0]
    loop = RunLoop(chunks([2] * 6), breakers(failures=3, cooldown=5, clock=lambda: now[0]),
                   first=3)
    c0, c1, c2 = submitted(loop)
    loop.finished(c0.index, summary(c0, failed=(0, 1)))
    loop.finished(c1.index, summary(c1, failed=(2,), not_run=(3,)))
    assert [b.state for b in loop.changed] == ["open"]  # the caller tells the workers
    assert loop.next_graphs() == []  # open: nothing is submitted
    loop.finished(c2.index, summary(c2, not_run=(4, 5)))  # the workers held them back
    assert loop.held == [({"item_id": 3},), ({"item_id": 4}, {"item_id": 5})]
    assert loop.seconds_to_probe() == 5 and loop.next_graphs() == []
    now[0] = 5.0
    (probe,) = submitted(loop)
    assert ids(probe) == [3] and loop.breakers["save"].state == "half-open"
    loop.finished(probe.index, summary(probe))
    assert loop.breakers["save"].state == "closed"
    # the held items and the rest run again, held ones first
    assert [i for c in submitted(loop) for i in ids(c)][:2] == [4, 5]
    while not loop.done():
        finish_running(loop)
        loop.next_graphs()
    assert loop.stopped is None and loop.not_run() == []


def test_a_failed_probe_stops_the_run_and_says_what_did_not_run():
    now = [0.0]
    loop = RunLoop(chunks([2] * 4), breakers(failures=2, cooldown=1, clock=lambda: now[0]),
                   first=2)
    c0, c1 = submitted(loop)
    loop.finished(c0.index, summary(c0, failed=(0, 1)))
    loop.finished(c1.index, summary(c1, not_run=(2, 3)))
    now[0] = 2.0
    (probe,) = submitted(loop)
    loop.finished(probe.index, summary(probe, failed=tuple(ids(probe))))
    assert loop.stopped is not None and loop.stopped.name == "save"
    assert loop.next_graphs() == [] and loop.done()
    assert sorted(i["item_id"] for i in loop.not_run()) == [3, 4, 5, 6, 7]


def test_a_breaker_open_on_the_last_items_stops_the_run():
    loop = RunLoop(chunks([3]), breakers(failures=3), first=1)
    (chunk,) = submitted(loop)
    loop.finished(0, summary(chunk, failed=(0, 1, 2)))
    assert loop.done() and loop.stopped is not None and loop.not_run() == []


@pytest.mark.parametrize("window,first", [(1, 4), (3, 2)])
def test_never_more_chunks_in_flight_than_the_window(window, first):
    loop = RunLoop(chunks([1] * 10), breakers(), window=window, first=first)
    seen = 0
    while not loop.done():
        loop.next_graphs()
        assert len(loop.running) <= window
        index = min(loop.running)
        loop.finished(index, summary(loop.running[index]))
        seen += 1
    assert seen == 10
