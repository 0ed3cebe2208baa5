"""A clean stop: SIGTERM or the session's time limit end the run after the step under way, with a checkpoint."""

from __future__ import annotations

import os
import signal
import time

from ..config import Config

KAGGLE_TIME_LIMIT_H = 11.5  # Kaggle notebook sessions end after 12 hours


class StopRequest:
    """Turns SIGTERM (Kaggle, schedulers, `kill`) and the time limit into a clean stop with a checkpoint."""

    def __init__(self, time_limit_h: float | None) -> None:
        self.deadline = time.monotonic() + time_limit_h * 3600 if time_limit_h else None
        self.signalled = False
        self.previous = None

    def __enter__(self) -> StopRequest:
        try:
            self.previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: signals cannot be caught here
            self.previous = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)

    def _handle(self, signum: int, frame: object) -> None:
        self.signalled = True

    def reason(self) -> str | None:
        if self.signalled:
            return "SIGTERM"
        if self.deadline is not None and time.monotonic() > self.deadline:
            return "time limit"
        return None


def default_time_limit(config: Config) -> float | None:
    if config.train.time_limit is not None:
        return config.train.time_limit
    return KAGGLE_TIME_LIMIT_H if os.environ.get("KAGGLE_KERNEL_RUN_TYPE") else None
