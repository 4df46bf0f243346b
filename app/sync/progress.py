"""Progress of a sync: a carriage-return bar on a terminal, plain lines otherwise."""
from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None, width: int = 30):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.width = width
        self.res_type = ""
        self.total: int | None = None
        self.done = 0
        self.started = time.perf_counter()
        self.pages = 0

    def start(self, res_type: str, total: int | None) -> None:
        if res_type != self.res_type:
            self.res_type, self.done, self.pages, self.started = res_type, 0, 0, time.perf_counter()
        self.total = total

    def _rate(self) -> float:
        elapsed = time.perf_counter() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def advance(self, n: int) -> None:
        self.done += n
        self.pages += 1
        if self.tty:
            if self.total:
                filled = min(self.width, int(self.width * self.done / max(self.total, 1)))
                bar = "#" * filled + "." * (self.width - filled)
                text = f"\r{self.res_type:<14} [{bar}] {self.done}/{self.total} {self._rate():.0f}/s"
            else:
                text = f"\r{self.res_type:<14} {self.done} records {self._rate():.0f}/s"
            self.stream.write(text)
        else:
            of = f"/{self.total}" if self.total is not None else ""
            self.stream.write(f"sync {self.res_type}: page {self.pages}, {self.done}{of} records\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty and self.pages:
            self.stream.write("\n")
            self.stream.flush()

    def note(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r" + " " * (self.width + 40) + "\r")
        self.stream.write(f"sync: {text}\n")
        self.stream.flush()
