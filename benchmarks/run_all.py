"""`make bench`: every benchmark of the README's table in turn, each printing its own figures
and its same-run baseline; exits non-zero when any of them does (a target not met). Run it
under scripts/with-postgres.sh, as `make bench` does, so the PostgreSQL figures are included."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

BENCHMARKS = [
    ["ingest.py"],
    ["consent_decisions.py"],
    ["classification.py"],
    ["linkage_febrl.py"],
    ["linkage_scale.py", "--sizes", "100000", "1000000", "--interleave"],
    ["family_view.py"],
    ["pages.py"],
    ["sync.py"],
    ["audit.py"],
    ["ops_overhead.py"],
]


def main() -> int:
    failed = []
    for args in BENCHMARKS:
        print(f"\n=== {' '.join(args)}", flush=True)
        if subprocess.run([sys.executable, str(HERE / args[0]), *args[1:]], cwd=HERE.parent).returncode != 0:
            failed.append(args[0])
    print(f"\n{len(BENCHMARKS) - len(failed)} of {len(BENCHMARKS)} benchmarks exited 0"
          + (f"; not: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
