"""Run the fault-injection trials: ``python -m cm_datacopy_tests.faults --trials 50 [--seed N]``.

Prints one line per trial and the summary line
``trials=N faults={kind: n, ...} resumes=N rows_lost=0 rows_duplicated=0``; exits 1 on any problem.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from cm_datacopy_tests.faults.harness import run


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m cm_datacopy_tests.faults", description=__doc__)
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--seed", type=int, default=None, help="repeat a series (printed at the start)")
    parser.add_argument("--rows", type=int, default=200_000, help="rows of the multi-chunk table")
    parser.add_argument("--chunk-size", type=int, default=10_000)
    parser.add_argument("--workdir", type=Path, default=None, help="keep servers' files and logs here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cm_datacopy_faults_") as tmp:
        workdir = args.workdir or Path(tmp)
        summary = run(args.trials, workdir, rows=args.rows, chunk_size=args.chunk_size, seed=args.seed)
    print(summary.details())
    for problem in summary.problems:
        print(problem)
    print(summary.line(), flush=True)
    return 1 if summary.problems else 0


if __name__ == "__main__":
    sys.exit(main())
