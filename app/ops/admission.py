"""Admission by priority: at most ``admission_slots`` requests run at once in a server process,
and when all are taken the next to run is the most urgent waiting, not the oldest.

A practitioner's family view is the request someone is waiting on at a visit; a source's
Bundle or a batch client's search can wait a little. Python runs a process's threads one at a
time, so thirty requests in flight take thirty times as long each: a family view arriving
behind a burst of ingests would wait for all of them. Here it waits, at most, for the first
slot to free, and writes never hold more than ``admission_write_slots`` of them (a 1,000-record
Bundle holds one slot; the others stay free for views and reads).

Classes, most urgent first: the family view and the practitioner pages; other reads; writes.
Health, readiness, metrics and the streamed audit export are never held (a probe must answer,
and an export streams for as long as its client reads)."""
from __future__ import annotations

import asyncio
from collections import deque

VIEW, READ, WRITE = 0, 1, 2
_UNHELD_PREFIXES = ("/healthz", "/readyz", "/metrics", "/ig/audit/export", "/static/")
_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def request_class(method: str, path: str) -> int | None:
    """The request's class (VIEW, READ, WRITE), or None for a request never held."""
    if path.startswith(_UNHELD_PREFIXES):
        return None
    if path.endswith("$family-view") or not path.startswith(("/fhir", "/ig", "/linkage", "/subscriptions")):
        return VIEW  # the family view (GET or POST) and the pages (/, /family, /governance, ...)
    return WRITE if method in _WRITES else READ


class AdmissionMiddleware:
    def __init__(self, app, slots: int, write_slots: int = 1):
        self.app = app
        self.slots = slots
        self.write_slots = max(1, min(write_slots, slots))
        self.running = 0
        self.writes = 0  # of running: at most write_slots, so a bulk load never holds every slot
        self._waiting: dict[int, deque[asyncio.Future]] = {VIEW: deque(), READ: deque(), WRITE: deque()}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.slots <= 0:
            await self.app(scope, receive, send)
            return
        klass = request_class(scope["method"], scope["path"])
        if klass is None:
            await self.app(scope, receive, send)
            return
        await self._acquire(klass)
        try:
            await self.app(scope, receive, send)
        finally:
            self._finish(klass)

    async def _acquire(self, klass: int) -> None:
        if self._may_start(klass) and not any(self._waiting.values()):
            self._start(klass)  # a free slot and no one waiting: the unloaded server's way, no future
            return
        turn = asyncio.get_running_loop().create_future()
        self._waiting[klass].append(turn)
        self._dispatch()
        try:
            await turn  # set by _dispatch, which has counted this request as running
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._finish(klass)  # its turn came as the client went away: pass it on
            raise

    def _may_start(self, klass: int) -> bool:
        return self.running < self.slots and (klass != WRITE or self.writes < self.write_slots)

    def _start(self, klass: int) -> None:
        self.running += 1
        if klass == WRITE:
            self.writes += 1

    def _finish(self, klass: int) -> None:
        self.running -= 1
        if klass == WRITE:
            self.writes -= 1
        self._dispatch()

    def _dispatch(self) -> None:
        """Fill the free slots with the most urgent waiting requests (a write only while fewer
        than write_slots writes run); a request whose client went away is dropped."""
        while self.running < self.slots:
            for klass in (VIEW, READ, WRITE):
                queue = self._waiting[klass]
                while queue and queue[0].done():
                    queue.popleft()
                if queue and self._may_start(klass):
                    self._start(klass)
                    queue.popleft().set_result(None)
                    break
            else:
                return
