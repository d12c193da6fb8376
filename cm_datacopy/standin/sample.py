"""Sample tables for the demo and the tests, created in a Snowflake (stand-in) database.

A mix of types, NULLs (including NULL timestamps and NULL chunk keys), unicode and JSON, so
the demo shows the copy keeping them.
"""

from __future__ import annotations

from typing import Any

from cm_datacopy.snowflake.sql import sf_ident

ANALYTICS_DB = "ANALYTICS"
CONFLICT_DB = "CONFLICT"


def _tables(rows: int) -> dict[str, dict[str, str]]:
    return {
        ANALYTICS_DB: {
            "EVENTS": f"""
                SELECT IFF(seq8() % 997 = 5, NULL, seq8() * 3)::NUMBER(38,0)
                           AS EVENT_ID,
                       (seq8() % 500)::NUMBER(38,0) AS USER_ID,
                       IFF(seq8() % 3 = 0, 'page_view', IFF(seq8() % 3 = 1, 'achat_réussi', '注文'))::VARCHAR(32)
                           AS EVENT_TYPE,
                       IFF(seq8() % 11 = 0, NULL,
                           DATEADD(second, seq8() * 37, '2024-03-09 12:00:00 -08:00'::TIMESTAMP_TZ)) AS OCCURRED_AT,
                       (seq8() % 100000 / 100)::NUMBER(12,2) AS AMOUNT,
                       IFF(seq8() % 13 = 0, NULL,
                           OBJECT_CONSTRUCT('n', seq8(), 'tag', 'ü-✓', 'nested', OBJECT_CONSTRUCT('k', seq8() % 7)))
                           AS PAYLOAD,
                       seq8() % 2 = 0 AS IS_TEST
                FROM TABLE(GENERATOR(ROWCOUNT => {rows}))""",
            "USERS": f"""
                SELECT seq8()::NUMBER(38,0) AS USER_ID,
                       'user' || seq8() || '@example.com' AS EMAIL,
                       IFF(seq8() % 5 = 0, NULL, 'Zoë 🚀 ' || seq8()) AS DISPLAY_NAME,
                       DATEADD(day, seq8() % 3000, '2015-01-01'::DATE) AS SIGNUP_DATE,
                       IFF(seq8() % 9 = 0, NULL, seq8() / 7.0)::FLOAT AS SCORE,
                       IFF(seq8() % 4 = 0, NULL, TO_BINARY(LPAD(TO_CHAR(seq8() % 65536, 'XXXX'), 4, '0'), 'HEX'))
                           AS AVATAR,
                       IFF(seq8() % 6 = 0, NULL, DATEADD(minute, seq8(), '1969-12-31 23:00:00'::TIMESTAMP_NTZ))
                           AS LAST_LOGIN,
                       PARSE_JSON('["a", "b' || (seq8() % 3) || '"]')::ARRAY AS TAGS
                FROM TABLE(GENERATOR(ROWCOUNT => {max(rows // 4, 10)}))""",
        },
        CONFLICT_DB: {
            "INCIDENTS": f"""
                SELECT seq8()::NUMBER(38,0) AS INCIDENT_ID,
                       IFF(seq8() % 17 = 0, NULL, DATEADD(day, seq8() % 4000, '2010-01-01'::DATE)) AS REPORTED_ON,
                       IFF(seq8() % 2 = 0, 'Région Île-de-France', 'Κρήτη') AS REGION,
                       (seq8() % 1000)::NUMBER(38,0) AS CASUALTIES,
                       (seq8() / 3)::NUMBER(38,6) AS LATITUDE,
                       IFF(seq8() % 7 = 0, NULL, PARSE_JSON('{{"source": "field", "verified": true}}')) AS DETAILS,
                       DATEADD(hour, seq8(), '2010-01-01 00:00:00'::TIMESTAMP_NTZ) AS UPDATED_AT
                FROM TABLE(GENERATOR(ROWCOUNT => {rows}))""",
            "REGIONS": """
                SELECT seq8()::NUMBER(9,0) AS REGION_ID, 'région ' || seq8() AS NAME, seq8() % 2 = 0 AS ACTIVE
                FROM TABLE(GENERATOR(ROWCOUNT => 40))""",
        },
    }


def create_sample_tables(
    conn: Any, rows: int, databases: tuple[str, ...] = (ANALYTICS_DB, CONFLICT_DB)
) -> dict[str, int]:
    """Create (or replace) the sample tables; returns rows per table as 'DB.TABLE'."""
    cur = conn.cursor()
    counts = {}
    for database, tables in _tables(rows).items():
        if database not in databases:
            continue
        cur.execute(f"CREATE DATABASE IF NOT EXISTS {sf_ident(database)}")
        cur.execute(f"CREATE SCHEMA IF NOT EXISTS {sf_ident(database)}.{sf_ident('PUBLIC')}")
        for table, select in tables.items():
            ref = f"{sf_ident(database)}.{sf_ident('PUBLIC')}.{sf_ident(table)}"
            cur.execute(f"CREATE OR REPLACE TABLE {ref} AS {select}")
            cur.execute(f"SELECT COUNT(*) FROM {ref}")
            counts[f"{database}.{table}"] = cur.fetchone()[0]
    return counts
