"""schemathesis over the whole OpenAPI document (openapi/openapi.json, as the server serves it)
against a real uvicorn server on SQLite and PostgreSQL, each case sent with the token of the
next role in turn (tests/api/fuzz_hooks.py): at least 2,000 cases, no 5xx, and every response
conforming to the documented status codes, content types, headers and schemas.

`make fuzz` runs the same for longer (FAMILYVIEW_FUZZ_EXAMPLES, FAMILYVIEW_FUZZ_PHASES)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from app.auth.tokens import ROLES
from app.settings import PROJECT_ROOT
from tests.conftest import ROLE_ORG, ROLE_SERVICE

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance"
EXAMPLES = int(os.environ.get("FAMILYVIEW_FUZZ_EXAMPLES", "20"))
PHASES = os.environ.get("FAMILYVIEW_FUZZ_PHASES", "examples,fuzzing")
SEED = os.environ.get("FAMILYVIEW_FUZZ_SEED", "20261207")
MIN_CASES = 2000
# CPython 3.11's ast is not thread-safe: hypothesis describing a lambda in one of schemathesis's
# two worker threads can fail with this while the other parses too. It is the fuzzer's own
# fault, raised before any request is sent; such a run is repeated once, never passed.
FUZZER_THREAD_FAULT = "AST constructor recursion depth mismatch"


def run_schemathesis(base_url: str, tokens: dict[str, str], report_dir: Path, *, examples: int = EXAMPLES, phases: str = PHASES) -> tuple[dict, str]:
    """One `st run` over every operation; (its JSON report, its console output)."""
    report_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.api.fuzz_hooks", "FAMILYVIEW_FUZZ_TOKENS": json.dumps(tokens),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
    cmd = [str(Path(sys.executable).with_name("st")), "run", f"{base_url}/openapi.json", "--checks", CHECKS, "--phases", phases,
           "-n", str(examples), "--seed", SEED, "-w", "2", "--no-shrink", "--generation-database", "none", "--no-color",
           "--request-timeout", "60", "--report", "json", "--report-dir", str(report_dir)]
    proc = subprocess.run(cmd, env=env, cwd=report_dir, capture_output=True, text=True, timeout=3600)
    reports = sorted(report_dir.glob("json-*.json"))
    assert reports, f"schemathesis wrote no report (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return json.loads(reports[-1].read_text()), proc.stdout


def role_tokens(live) -> dict[str, str]:
    return {role: live.token(role, ROLE_ORG[role], ROLE_SERVICE.get(role)) for role in ROLES}


def only_fuzzer_thread_faults(report: dict, output: str) -> bool:
    """True when the run's only problems are errors inside the fuzzer (FUZZER_THREAD_FAULT). The
    JSON report gives an error's title and count only; its message is in the console output."""
    errors = report.get("errors") or []
    return (bool(errors) and not report.get("failures") and all(e.get("title") == "Runtime Error" for e in errors)
            and output.count(FUZZER_THREAD_FAULT) >= sum(int(e.get("count") or 1) for e in errors))


def test_only_the_fuzzers_own_thread_fault_earns_a_second_run():
    """As schemathesis 4 reports it (a run of this suite, 2026-12-07): errors by title and count
    in the JSON, the message in the console."""
    fault = {"errors": [{"title": "Runtime Error", "count": 1}], "failures": []}
    said = "Runtime Error\n\nAST constructor recursion depth mismatch (before=174, after=176)\n"
    assert only_fuzzer_thread_faults(fault, said)
    assert not only_fuzzer_thread_faults(fault, "Runtime Error\n\nConnection refused\n")  # any other error fails the test
    assert not only_fuzzer_thread_faults({"errors": [{"title": "Runtime Error", "count": 2}], "failures": []}, said)
    assert not only_fuzzer_thread_faults({**fault, "failures": [{"title": "Server error"}]}, said)
    assert not only_fuzzer_thread_faults({"errors": [{"title": "Network Error", "count": 1}], "failures": []}, said)
    assert not only_fuzzer_thread_faults({"errors": [], "failures": []}, said)


def test_schemathesis_finds_no_server_error_and_no_undocumented_response(live, tmp_path):
    report, output = run_schemathesis(live.base_url, role_tokens(live), tmp_path / "first")
    if only_fuzzer_thread_faults(report, output):
        report, output = run_schemathesis(live.base_url, role_tokens(live), tmp_path / "again")
    # the failures (each with its curl line to reproduce it) and errors sections, then the summary
    sections = [output[i:i + 8000] for i in (output.find(" FAILURES "), output.find(" ERRORS ")) if i >= 0]
    tail = "\n...\n".join([*sections, output[-3000:]])
    ops = report["operations"]
    assert ops["errored"] == 0, tail
    # every operation is exercised (schemathesis has been seen to skip one of the 129 in a run,
    # reporting "No examples in schema" for it: its fuzzing drew no case that run)
    assert ops["tested"] >= ops["total"] - 1, (ops, tail)
    assert report["test_cases"]["generated"] >= MIN_CASES, f"only {report['test_cases']['generated']} cases:\n{tail}"
    assert not report["failures"], tail
    assert not report["errors"], tail
    assert report["exit_code"] == 0, tail
