"""The layers of the house (.importlinter): consent/ pure, the family plan pure, foundations,
storage, audit and services each importing nothing above them. A change that makes a lower
layer import a higher one fails here, with the chain of imports that does it."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_layers_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--config", str(ROOT / ".importlinter")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout and "consent/ is pure" in done.stdout
