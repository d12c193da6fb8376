"""The fault-injection harness, short: about 10 trials, every fault kind at least once.

The full series is one command: ``.venv/bin/python -m cm_datacopy_tests.faults --trials 50``.
"""

from __future__ import annotations

import os

import pytest

from cm_datacopy_tests.faults.harness import KINDS, run


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_faults_at_random_moments_lose_and_duplicate_nothing(tmp_path):
    trials = int(os.environ.get("CM_DATACOPY_FAULT_TRIALS", "10"))
    summary = run(trials, tmp_path, rows=100_000, chunk_size=5_000)
    print(summary.line())
    assert summary.problems == [], "\n".join(summary.problems)
    if trials >= len(KINDS):
        assert set(summary.faults) == set(KINDS), "every fault kind is exercised"
    assert "rows_lost=0 rows_duplicated=0" in summary.line()
