"""``cm-datacopy init``: a starter config with comments, both Snowflake auth methods shown.

The repository's ``cm_datacopy.yaml`` is this text (a test keeps them equal), and the demo points
its sources at the stand-ins, so the starter is the config every example runs.
"""

from __future__ import annotations

from pathlib import Path

from cm_datacopy.errors import ConfigError

STARTER = """\
# cm_datacopy sources: one file, every source. Secrets are never written here: each *_env field
# names the environment variable that holds the secret. `cm-datacopy validate` checks this file
# and writes nothing; docs/configuration.md lists every field with its default.
defaults:                        # apply to every source unless it sets its own
  resume_max_age_hours: 12       # a run started longer ago than this is not resumed: a new run starts
  no_resume: false               # true: every run starts afresh (not recommended)
  max_resume_attempts: 5         # automatic resumes (Dagster sensor) before giving up
  chunk_timeout_seconds: 900     # PostgreSQL ends a chunk's transaction after this long
  postgres:                      # the target; the ledger lives there too
    host: 127.0.0.1
    port: 5432
    dbname: warehouse_copy
    user: cm_datacopy
    password_env: CM_DATACOPY_PG_PASSWORD
    # ledger_schema: cm_datacopy_ledger   # default migration_status; another name lives beside old tables

sources:
  analytics:                     # password auth
    snowflake:
      account: myorg-analytics   # your account identifier (orgname-accountname)
      user: CM_DATACOPY
      password_env: SNOWFLAKE_ANALYTICS_PASSWORD
      database: ANALYTICS
      schema: PUBLIC
      warehouse: COPY_WH
      role: CM_DATACOPY_READER
    tables:
      - source: EVENTS           # exact Snowflake name (unquoted names are upper case)
        target_schema: analytics # target table: analytics.events (the name lower-cased)
        chunk_key: EVENT_ID      # a number, date or timestamp column
        chunk_size: 2000         # rows per chunk, approximately
      - source: USERS
        target_schema: analytics
        chunk_key: USER_ID
        chunk_size: 2000

  conflict:                      # key-pair auth (recommended for service users)
    snowflake:
      account: myorg-conflict
      user: CM_DATACOPY
      private_key_file_env: SNOWFLAKE_CONFLICT_KEY_FILE       # path of a PEM private key
      private_key_passphrase_env: SNOWFLAKE_CONFLICT_KEY_PASSPHRASE  # leave out for an unencrypted key
      database: CONFLICT
      schema: PUBLIC
      warehouse: COPY_WH
      role: CM_DATACOPY_READER
    workers: 2                   # chunks copied at once within this source
    tables:
      - source: INCIDENTS
        target_schema: conflict
        chunk_key: REPORTED_ON   # a date key: NULL dates ride with the first chunk
        chunk_size: 1500
      - source: REGIONS
        target_schema: conflict  # no chunk_key: copied as one chunk
"""


def write_starter(path: Path, *, force: bool = False) -> None:
    if path.exists() and not force:
        raise ConfigError(f"{path} exists; pass --force to overwrite it, or --output another file")
    path.write_text(STARTER, encoding="utf-8")
