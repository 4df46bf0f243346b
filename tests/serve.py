"""`familyview serve` as its own process, as an operator runs it: for the tests that need the
real entry point (its start-up checks, a SIGKILL, a restart between two deliveries) rather
than the app served in-process (tests.conftest.start_server)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from app.settings import PROJECT_ROOT
from tests.conftest import free_port


class ServeProcess:
    """One `familyview serve` on a free loopback port. Its output (stdout and stderr) goes to
    ``log``, read back by ``output()``; ``env`` is added to this process's environment (with
    ``clean`` to none of its FAMILYVIEW_ settings)."""

    def __init__(self, env: dict[str, str], *args: str, log: Path, clean: bool = False):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        inherited = {k: v for k, v in os.environ.items() if not (clean and k.startswith("FAMILYVIEW_"))}
        with open(log, "ab") as out:  # the child keeps its own descriptor
            self.proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port), *args],
                                         cwd=PROJECT_ROOT, env={**inherited, **env}, stdout=out, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_up(self, timeout: float = 60) -> "ServeProcess":
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, f"familyview serve exited ({self.proc.returncode}):\n{self.output()[-2000:]}"
            assert time.monotonic() < deadline, f"familyview serve did not start within {timeout:.0f} s:\n{self.output()[-2000:]}"
            time.sleep(0.1)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> str:
        """Stopped as an operator stops it (SIGTERM, then SIGKILL after 20 s); its output."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.output()
