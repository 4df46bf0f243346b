"""consent/ is a pure decision core: no web framework, database, HTTP client or app code,
and no file or network access while deciding."""

from __future__ import annotations

import ast
import builtins
import socket
from pathlib import Path

import pytest

import consent
from consent import Outcome, Purpose, decide
from consent_testkit import FATHER, hv_mental_health_consent, item, request

PACKAGE = Path(consent.__file__).parent
FORBIDDEN = ("app", "fastapi", "starlette", "sqlalchemy", "alembic", "httpx", "requests", "urllib3", "aiohttp", "socket")
#: Modules that run at decision time: they must not even import file-reading helpers.
DECISION_MODULES = ("engine.py", "fhir_consent.py", "model.py")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            if node.args and isinstance(node.args[0], ast.Constant):
                names.add(str(node.args[0].value))
    return names


def python_files() -> list[Path]:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) >= 6, files
    return files


@pytest.mark.parametrize("path", python_files(), ids=lambda p: p.name)
def test_module_imports_nothing_forbidden(path):
    for name in imported_modules(path):
        top = name.split(".")[0]
        assert top not in FORBIDDEN, f"{path.name} imports {name}"


def test_the_ast_check_would_catch_a_forbidden_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom app.db import engine\nimport sqlalchemy.orm as orm\n__import__('httpx')\n")
    assert {"app.db", "sqlalchemy.orm", "httpx"} <= imported_modules(bad)


@pytest.mark.parametrize("name", DECISION_MODULES)
def test_decision_modules_do_no_io(name):
    source = (PACKAGE / name).read_text(encoding="utf-8")
    tree = ast.parse(source)
    calls = {getattr(n.func, "id", getattr(n.func, "attr", "")) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert not calls & {"open", "read_text", "read_bytes", "urlopen", "safe_load"}
    assert not imported_modules(PACKAGE / name) & {"yaml", "pathlib", "os", "io"}


def test_deciding_touches_no_file_or_socket(monkeypatch):
    decide(request(what=item("identity")))  # make sure the baseline policy is loaded first

    def refuse(*args, **kwargs):
        raise AssertionError("I/O during a decision")

    monkeypatch.setattr(builtins, "open", refuse)
    monkeypatch.setattr(socket, "socket", refuse)
    for purpose in Purpose:
        decision = decide(request(purpose=purpose, about=FATHER, what=item("mental-health"),
                                  consents=(hv_mental_health_consent(),)))
        assert decision.outcome is Outcome.PERMIT
