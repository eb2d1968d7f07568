"""A computation in a background thread, so the kernel stays free to take a cancel click.

A panel's comm messages are handled on the kernel's main thread, one at a time. A sweep that ran
there would block the very message that cancels it; so :class:`BackgroundJob` runs it in a
``threading.Thread``. The job's progress callback (``tick``) reports to the panel at most ``hz``
times a second (always the first and the last report) and returns False once ``cancel()`` was
called, which stops a :func:`~workbench.patching.patch_sweep` after its current forward pass.

The model runs one computation at a time: the job holds ``lock`` while it computes (a sweep
attaches hooks to the shared model), and quick work on the kernel thread (a click, a cost
estimate) takes it with :meth:`BackgroundJob.exclusive` or :meth:`~BackgroundJob.holding`,
which refuse at once rather than block the kernel while a sweep runs. An exception in the thread
goes to ``on_error`` (the panel's error area) and the thread ends, always calling ``on_done``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from workbench.errors import InputError


class BackgroundJob:
    """At most one background computation at a time; see the module docstring."""

    def __init__(self, *, on_progress: Callable[[int, int], None], on_error: Callable[[BaseException], None],
                 on_done: Callable[[], None], hz: float = 20.0, lock: Any = None) -> None:
        self.lock = lock if lock is not None else threading.RLock()  # the model's (shared by panels)
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_progress, self._on_error, self._on_done = on_progress, on_error, on_done
        self._interval, self._last, self._ticks = 1.0 / hz, 0.0, 0

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def start(self, target: Callable[..., Any], *args: Any) -> None:
        """Run ``target(*args)`` in a new thread (an InputError if one is still running)."""
        if self.running:
            raise InputError("A sweep is already running: cancel it (or wait for it) first.")
        self._cancel.clear()
        self._ticks = 0
        thread = threading.Thread(target=self._run, args=(target, args), name="workbench-patching",
                                  daemon=True)
        self._thread = thread
        thread.start()

    def _run(self, target: Callable[..., Any], args: tuple) -> None:
        try:
            with self.lock:
                target(*args)
        except BaseException as exc:  # noqa: BLE001 - nobody would see it in a thread: hand it on
            self._on_error(exc)
        finally:
            self._on_done()

    def tick(self, done: int, total: int) -> bool:
        """The progress callback: report (throttled); False once cancelled."""
        now = time.monotonic()
        if self._ticks == 0 or done >= total or now - self._last >= self._interval:
            self._last = now
            self._on_progress(done, total)
        self._ticks += 1
        return not self._cancel.is_set()

    def cancel(self) -> None:
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> None:
        """Join the thread (if any); a TimeoutError if it is still running after ``timeout``."""
        thread = self._thread
        if thread is None:
            return
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"The sweep is still running after {timeout} s; cancel() it or wait longer.")

    @contextlib.contextmanager
    def holding(self) -> Iterator[bool]:
        """Hold the model for quick work on the kernel thread if it is free: yields whether it
        was (never blocks)."""
        free = self.lock.acquire(blocking=False)
        try:
            yield free
        finally:
            if free:
                self.lock.release()

    @contextlib.contextmanager
    def exclusive(self, refusal: str) -> Iterator[None]:
        """Hold the model for quick work on the kernel thread, or raise InputError(``refusal``)
        at once while a job computes."""
        with self.holding() as free:
            if not free:
                raise InputError(refusal)
            yield
