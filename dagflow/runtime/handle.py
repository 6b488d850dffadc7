"""A run going on in the background: :class:`RunHandle` (``dagflow.run(..., wait=False)``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dagflow.runtime.result import RunResult

__all__ = ["RunHandle"]


class RunHandle:
    """A run going on in the background (``dagflow.run(..., wait=False)``).

    The notebook stays usable; :meth:`result` waits for the :class:`RunResult`.
    """

    def __init__(self, target: Callable[[RunHandle], RunResult]) -> None:
        self.done_items = 0
        self.failed_items = 0
        self.dashboard: str | None = None
        #: Items this run executes (known once the run has compared inputs and records).
        self.total_items: int | None = None
        self.run_id: str | None = None
        self.run_dir: Path | None = None
        self.started = time.time()
        self._result: RunResult | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, args=(target,), daemon=True,
                                        name="dagflow-run")
        self._thread.start()

    def _main(self, target: Callable[[RunHandle], RunResult]) -> None:
        try:
            self._result = target(self)
        except BaseException as exc:
            self._error = exc

    def _on_progress(self, done: int, failed: int) -> None:
        self.done_items, self.failed_items = done, failed

    def _begin(self, result: RunResult) -> None:
        """The run knows what it will execute (called before its cluster connects)."""
        self.total_items = result.executed
        self.run_id, self.run_dir = result.run_id, result.run_dir

    def done(self) -> bool:
        """Whether the run has finished (or failed)."""
        return not self._thread.is_alive()

    def result(self, timeout: float | None = None) -> RunResult:
        """Wait for the run and return its result (or raise its error)."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the run is still going after {timeout} s")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def exception(self) -> BaseException | None:
        """The error the run raised, or ``None`` (while it runs, or when it finished)."""
        return None if self._thread.is_alive() else self._error

    def __repr__(self) -> str:
        state = "finished" if self.done() else "running"
        return f"<RunHandle {state}: {self.done_items} items done, {self.failed_items} failed>"

    def _repr_html_(self) -> str:
        from dagflow.notebook import handle_html

        return handle_html(self)

    def _ipython_display_(self) -> None:
        # In Jupyter: a progress bar that keeps updating until the run ends
        from dagflow.notebook import display_handle

        display_handle(self)
