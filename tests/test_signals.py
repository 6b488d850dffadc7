"""How the driving process takes stop signals (dagflow.runtime.signals), in-process."""

from __future__ import annotations

import gc
import os
import signal
import time

import pytest

from dagflow.runtime.signals import Terminated, sigterm_as_interrupt


def test_sigterm_raises_terminated_in_the_block_and_the_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(Terminated), sigterm_as_interrupt(quiet=True):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # interrupted at once
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    assert isinstance(Terminated(), KeyboardInterrupt)  # every `except KeyboardInterrupt`


class _SignalledWhileCollected:
    dropped: list[BaseException] = []

    def __del__(self) -> None:  # Python drops an exception raised here
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(100_000):  # the handler runs between these bytecodes
                pass
        except Terminated as exc:
            self.dropped.append(exc)
            raise


def test_a_stop_signal_dropped_where_python_ignores_exceptions_is_raised_again(capfd):
    with pytest.raises(Terminated), sigterm_as_interrupt():
        cycle = _SignalledWhileCollected()
        cycle.me = cycle
        del cycle
        gc.collect()  # the first Terminated is raised in __del__, and dropped
        assert len(_SignalledWhileCollected.dropped) == 1
        time.sleep(30)  # without the second, the block would end here with no exception
    assert "Terminated" not in capfd.readouterr().err  # not printed as "ignored"
