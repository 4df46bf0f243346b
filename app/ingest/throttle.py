"""Per-source write throttle: at most so many writes of one source organisation run at once in a
server process; the next waits its turn, and after a bounded wait is told 429 with Retry-After.
A bulk load from one system then occupies a few of the server's worker threads, never all of
them, so readers (a family view) and other sources are not queued behind it."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

from app.errors import FhirError


class WriteThrottle:
    def __init__(self, per_source: int, wait_seconds: float):
        self.per_source = per_source
        self.wait_seconds = wait_seconds
        self._slots: dict[str, threading.BoundedSemaphore] = {}
        self._lock = threading.Lock()

    def _slot(self, org: str) -> threading.BoundedSemaphore:
        with self._lock:
            slot = self._slots.get(org)
            if slot is None:
                slot = self._slots[org] = threading.BoundedSemaphore(self.per_source)
            return slot

    @contextmanager
    def turn(self, org: str) -> Iterator[None]:
        slot = self._slot(org)
        if not slot.acquire(timeout=self.wait_seconds):
            raise FhirError(429, "throttled", f"This source already has {self.per_source} writes in progress; retry shortly",
                            spine_code="TOO_MANY_REQUESTS", headers={"Retry-After": "1"})
        try:
            yield
        finally:
            slot.release()
