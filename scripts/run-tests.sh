#!/usr/bin/env bash
# The whole suite. pytest's exit code 5 (no tests collected) is a failure here, never a pass.
set -uo pipefail
PY=${1:-.venv/bin/python}
"$PY" -m pytest tests -q -p no:cacheprovider "${@:2}"
status=$?
if [ "$status" -eq 5 ]; then
  echo "run-tests: pytest collected no tests: failing" >&2
  exit 1
fi
exit $status
