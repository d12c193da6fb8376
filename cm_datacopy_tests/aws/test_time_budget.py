"""Chunks sized by time: the planner uses the rows per second the ledger measured in earlier runs."""

from __future__ import annotations

import psycopg

from cm_datacopy.chunk import copy_chunk
from cm_datacopy.postgres.ledger import Ledger
from cm_datacopy.postgres.lock import SourceLock
from cm_datacopy.run.plan import chunk_rows, measured_rows_per_second
from cm_datacopy.run.resume import start_or_resume
from cm_datacopy_tests.aws.conftest import EVENTS_CHUNK, EVENTS_ROWS


def test_chunk_rows_fit_chunk_max_seconds(plan_source):
    planned = plan_source(compute={"chunk_max_seconds": 5})
    table = planned.cfg.tables[0]
    assert chunk_rows(planned.cfg, table, None) == EVENTS_CHUNK  # no history: chunk_size
    assert chunk_rows(planned.cfg, table, 100.0) == 500  # 100 rows/s for 5 s
    assert chunk_rows(planned.cfg, table, 1e6) == EVENTS_CHUNK  # never more than chunk_size
    assert chunk_rows(planned.cfg, table, 0.01) == 1


def test_a_slow_table_is_planned_in_smaller_chunks(plan_source):
    planned = plan_source(compute={"chunk_max_seconds": 5})
    assert len(planned.tasks()) == 3  # the first run: chunk_size rows per chunk
    for task in planned.tasks():
        assert copy_chunk(planned.cfg, task).outcome == "copied"
    with psycopg.connect(**planned.pg) as pg:
        measured = measured_rows_per_second(planned.cfg, pg)[planned.table_key]
        assert measured > 0
        # As if the copy had run at 100 rows/s (a slow warehouse): 5 s of it is 500 rows.
        pg.execute("UPDATE migration_status.migration_chunk_status SET duration_seconds = rows_copied / 100.0")
        pg.commit()
        assert round(measured_rows_per_second(planned.cfg, pg)[planned.table_key]) == 100
        with SourceLock(planned.cfg):
            second = start_or_resume(planned.cfg, pg, no_resume=True)
        chunks = Ledger().chunks(pg, second.run_id, table_key=planned.table_key)
    assert EVENTS_ROWS / 500 * 0.7 <= len(chunks) <= EVENTS_ROWS / 500 * 1.3, len(chunks)
