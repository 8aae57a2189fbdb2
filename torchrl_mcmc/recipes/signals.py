"""Stopping a run cleanly on SIGINT / SIGTERM (Ctrl-C, a scheduler's pre-emption)."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

logger = logging.getLogger(__name__)


class StopRequests:
    """SIGINT / SIGTERM ask the loop to stop before its next update.

    Within the ``with`` block the first of these signals only sets :attr:`signum`; the loop
    checks it before each update and after each iteration, writes a checkpoint and exits
    (status 128 + the signal number), so an interrupted run loses nothing and resumes with
    ``resume=<run dir>``, the updates its iteration had left first. A stop waits only for the
    update, batch collection or evaluation under way. A second signal falls through to the
    handlers that were there before (Python's default: stop now), so a stuck run can still be
    killed. Handlers exist only in the main thread; elsewhere this does nothing.

    Examples:
        >>> with StopRequests() as stop:
        ...     for _ in range(3):
        ...         if stop.signum is not None:
        ...             break
        >>> stop.signum is None
        True
    """

    def __init__(self) -> None:
        #: The signal received, ``None`` until one is.
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._request)
        return self

    def _request(self, signum: int, frame: Any) -> None:
        self.signum = signum
        logger.warning(
            "%s received: stopping before the next update (again to stop now)",
            signal.Signals(signum).name,
        )
        for previous_signum, handler in self._previous.items():
            signal.signal(previous_signum, handler)

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
