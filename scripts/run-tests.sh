#!/usr/bin/env bash
# The whole suite: the tests in parallel (pytest-xdist, FAMILYVIEW_TEST_WORKERS, default 2; a test
# file, and the whole HAPI suite, stay on one worker), then the `serial` ones alone (they restart
# PostgreSQL or time something). FAMILYVIEW_TEST_MARK narrows both (make test-fast: "not db").
# pytest's exit code 5 (no tests collected) is a failure here,
# never a pass. Extra arguments go to both runs.
set -uo pipefail
PY=${1:-.venv/bin/python}
WORKERS=${FAMILYVIEW_TEST_WORKERS:-2}
MARK=${FAMILYVIEW_TEST_MARK:-}
SELECT=${MARK:+ and ($MARK)}
started=$(date +%s)
"$PY" -m pytest tests -q -p no:cacheprovider -n "$WORKERS" --dist loadgroup -m "not serial$SELECT" --durations=15 "${@:2}"
status=$?
if [ "$status" -eq 5 ]; then
  echo "run-tests: pytest collected no tests: failing" >&2
  exit 1
fi
echo "run-tests: parallel run done in $(( $(date +%s) - started ))s (exit $status); now the serial tests" >&2
"$PY" -m pytest tests -q -p no:cacheprovider -m "serial$SELECT" "${@:2}"
serial=$?
if [ "$serial" -ne 0 ] && [ "$serial" -ne 5 ]; then
  status=$serial
fi
echo "run-tests: done in $(( $(date +%s) - started ))s" >&2
exit $status
