"""A one-slot mailbox that keeps only the newest item: how the live pipeline's stages hand
work to each other without queues that grow (and lag) when a later stage is slower.

    box = Newest()
    box.put(item)                          # producer: replaces what was there
    serial, item = box.get(after=serial)   # consumer: waits for something newer
    box.close("end of video")              # get() then returns None once drained
"""

from __future__ import annotations

import threading
import time
from typing import Any

__all__ = ["Newest"]


class Newest:
    """Thread-safe newest-item slot with a serial number per `put`."""

    def __init__(self):
        self._cond = threading.Condition()
        self._item: Any = None
        self.serial = 0
        self.closed: str | None = None  # why the producer stopped, once it has

    def put(self, item: Any) -> int:
        with self._cond:
            self._item = item
            self.serial += 1
            self._cond.notify_all()
            return self.serial

    def close(self, reason: str = "closed") -> None:
        with self._cond:
            if self.closed is None:
                self.closed = reason
            self._cond.notify_all()

    def get(self, after: int = 0, timeout: float | None = None) -> tuple[int, Any] | None:
        """The newest ``(serial, item)`` with serial > `after`; None when closed and nothing
        newer will come. Raises TimeoutError if nothing newer arrives within `timeout` s."""
        deadline = None if timeout is None else time.perf_counter() + timeout
        with self._cond:
            while self.serial <= after and self.closed is None:
                remaining = None if deadline is None else deadline - time.perf_counter()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError
                self._cond.wait(remaining)
            if self.serial <= after:
                return None
            return self.serial, self._item
