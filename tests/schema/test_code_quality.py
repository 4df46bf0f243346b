"""Lint and types in `make test`: ruff's error rules over the whole tree; ruff formatting and
mypy --strict over the pure modules (the consent engine and the family view's plan), which an
IG officer and a clinical safety officer are meant to be able to read."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PURE = ["consent", "app/family/plan.py", "app/family/render.py", "app/family/members.py", "app/family/contract.py"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / args[0]), *args[1:]], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_finds_no_error_in_the_tree():
    done = _run("ruff", "check", ".")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-1000:]


def test_the_pure_modules_are_formatted():
    done = _run("ruff", "format", "--check", *PURE)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-1000:]


def test_the_pure_modules_pass_mypy_strict():
    done = _run("mypy", "--strict", *PURE)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-1000:]
