"""What a run's Snowflake sessions send at login: the pinned session parameters, a QUERY_TAG naming the
source and the run, and no client-side per-query timeout below the configured one.

The stand-in records each login's ``SESSION_PARAMETERS`` and client environment as it receives them.
"""

from __future__ import annotations

import yaml

from cm_datacopy.snowflake import session as sf_session
from cm_datacopy_tests.helpers import cli, load, pg_rows, sf_execute, write_config

PINNED = {
    "TIMEZONE": "UTC",
    "QUOTED_IDENTIFIERS_IGNORE_CASE": False,
    "DATE_INPUT_FORMAT": "AUTO",
    "TIME_INPUT_FORMAT": "AUTO",
    "TIMESTAMP_INPUT_FORMAT": "AUTO",
    "PYTHON_CONNECTOR_QUERY_RESULT_FORMAT": "ARROW",
    "ROWS_PER_RESULTSET": 0,
    "STATEMENT_TIMEOUT_IN_SECONDS": 1234,
}


def test_a_runs_logins_pin_the_session_and_tag_the_queries(snowflake_server, sf_db, pg_db, config_path):
    sf_execute(
        snowflake_server,
        sf_db,
        "CREATE TABLE PUBLIC.EVENTS AS SELECT seq8()::NUMBER(38,0) AS ID FROM TABLE(GENERATOR(ROWCOUNT => 100))",
    )
    write_config(config_path, snowflake_server, sf_db, pg_db, [{"source": "EVENTS", "target_schema": "copy"}])
    raw = yaml.safe_load(config_path.read_text())
    raw["sources"]["analytics"]["snowflake"]["query_timeout_seconds"] = 1234
    config_path.write_text(yaml.safe_dump(raw))

    result = cli(config_path, "run", "analytics")
    assert result.returncode == 0, result.stdout + result.stderr
    [(run_id,)] = pg_rows(pg_db, "SELECT run_id FROM migration_status.migration_runs")
    logins = [
        login
        for login in snowflake_server.stats()["logins"]
        if f"run={run_id}" in str((login["session_parameters"] or {}).get("QUERY_TAG"))
    ]
    tags = {login["session_parameters"]["QUERY_TAG"] for login in logins}
    # the plan (which runs the self-test) and the worker's two sessions (rows, checksum)
    assert f"cm_datacopy source=analytics run={run_id} step=plan" in tags
    assert f"cm_datacopy source=analytics run={run_id}" in tags
    assert len(logins) >= 3
    for login in logins:
        sent = login["session_parameters"]
        assert {k: sent.get(k) for k in PINNED} == PINNED
        assert login["network_timeout"] is None  # the connector's default per-query cancel stays off
        assert login["login_timeout"] == 10  # the test config's login_timeout_seconds


def test_a_session_tells_the_stand_in_from_snowflake(snowflake_server, sf_db, pg_db, config_path):
    """The dialect of the few functions DuckDB lacks is chosen by what the server says it is."""
    write_config(config_path, snowflake_server, sf_db, pg_db, [{"source": "EVENTS", "target_schema": "copy"}])
    cfg = load(config_path).sources["analytics"]
    tag = "cm_datacopy source=analytics run=r1 step=check"
    assert sf_session.pinned_session_parameters(cfg.snowflake, tag)["QUERY_TAG"] == tag
    with sf_session.connect(cfg.snowflake, tag) as sf:
        assert sf.dialect == "standin"
        rows = sf.execute("SELECT CURRENT_VERSION()").fetchone()
    assert "standin" in rows[0]
    login = snowflake_server.stats()["logins"][-1]
    assert login["session_parameters"]["QUERY_TAG"] == tag
    assert login["session_parameters"]["TIMEZONE"] == "UTC"
