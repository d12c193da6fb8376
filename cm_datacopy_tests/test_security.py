"""Security: secrets never appear anywhere cm_datacopy writes; the copy runs with the least privileges.

The PostgreSQL password is checked for real: a private pgserver with scram-sha-256 for every role but
the admin, reached over loopback TCP through the test proxy (the shared server trusts 127.0.0.1).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg import sql

from cm_datacopy.standin import snowflake as standin
from cm_datacopy_tests.faults.pgprivate import PrivatePostgres
from cm_datacopy_tests.faults.proxy import Proxy
from cm_datacopy_tests.helpers import admin_conninfo, cli, pg_rows, sf_connect, write_config

SF_SECRET = "SFsecret-" + secrets.token_hex(6)
PG_SECRET = "PGsecret-" + secrets.token_hex(6)
PASSPHRASE = "KEYpass-" + secrets.token_hex(6)
WRONG = "WRONGsecret-" + secrets.token_hex(6)


@pytest.fixture(scope="module")
def secret_snowflake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[standin.StandinSnowflake]:
    with standin.running(SF_SECRET, tmp_path_factory.mktemp("fakesnow-secret")) as where:
        conn = sf_connect(where)
        try:
            cur = conn.cursor()
            for statement in (
                'CREATE DATABASE "SEC"',
                'CREATE SCHEMA "SEC"."PUBLIC"',
                'USE SCHEMA "SEC"."PUBLIC"',
                "CREATE TABLE EVENTS AS SELECT seq8()::NUMBER(38,0) AS ID, 'row ' || seq8() AS BODY "
                "FROM TABLE(GENERATOR(ROWCOUNT => 5000))",
            ):
                cur.execute(statement)
        finally:
            conn.close()
        yield where


@pytest.fixture(scope="module")
def password_pg() -> Iterator[dict[str, Any]]:
    """A private PostgreSQL where role cm_copier must give its password (scram-sha-256), via loopback TCP."""
    import tempfile

    workdir = Path(tempfile.mkdtemp(prefix="cm_datacopy_secpg_"))
    pg = PrivatePostgres(workdir)
    try:
        (pg.pgdata / "pg_hba.conf").write_text("local all postgres trust\nlocal all all scram-sha-256\n")
        pg._pg_ctl("reload")
        with psycopg.connect(**pg.conninfo(), autocommit=True) as admin:
            admin.execute("SET password_encryption = 'scram-sha-256'")
            admin.execute(sql.SQL("CREATE ROLE cm_copier LOGIN PASSWORD {}").format(sql.Literal(PG_SECRET)))
            admin.execute("CREATE DATABASE copydb OWNER cm_copier")
        with Proxy(pg.socket_path) as proxy:
            yield {"admin": pg.conninfo("copydb"), "host": "127.0.0.1", "port": proxy.port, "dbname": "copydb"}
    finally:
        pg.stop()
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)


def _config(path: Path, sf: standin.StandinSnowflake, pg: dict[str, Any], **snowflake: Any) -> Path:
    body = {
        "snowflake": {
            "account": sf.account,
            "user": sf.user,
            "password_env": "SEC_SF_PASSWORD",
            "database": "SEC",
            "host": sf.host,
            "port": sf.port,
            "protocol": "http",
            "login_timeout_seconds": 5,
            **snowflake,
        },
        "postgres": {
            "host": pg["host"],
            "port": pg["port"],
            "dbname": pg["dbname"],
            "user": "cm_copier",
            "password_env": "SEC_PG_PASSWORD",
        },
        "tables": [{"source": "EVENTS", "target_schema": "copy", "chunk_key": "ID", "chunk_size": 1000}],
    }
    if "private_key_file_env" in snowflake:
        body["snowflake"].pop("password_env")
    path.write_text(yaml.safe_dump({"sources": {"analytics": body}}, sort_keys=False))
    return path


def _ledger_text(admin: dict[str, Any]) -> str:
    with psycopg.connect(**admin) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'migration_status'"
        ).fetchall()
        return "\n".join(
            row[0]
            for (table,) in tables
            for row in conn.execute(
                sql.SQL("SELECT t::text FROM {} t").format(sql.Identifier("migration_status", table))
            ).fetchall()
        )


def test_secrets_never_appear_in_output_errors_or_the_ledger(secret_snowflake, password_pg, tmp_path):
    config = _config(tmp_path / "cfg.yaml", secret_snowflake, password_pg)
    env = {**os.environ, "SEC_SF_PASSWORD": SF_SECRET, "SEC_PG_PASSWORD": PG_SECRET}
    produced: list[str] = []

    def run(*args: str, expect: int | None = 0, environ: dict[str, str] | None = None) -> None:
        for verbose in ([], ["-v"]):
            result = cli(config, *verbose, *args, env=environ or env)
            produced.append(result.stdout + result.stderr)
            if expect is not None:
                assert result.returncode == expect, result.stdout + result.stderr

    run("validate")
    run("check")
    run("plan")
    run("run", "analytics")
    run("status", "analytics")
    assert pg_rows(password_pg["admin"], "SELECT count(*) FROM copy.events") == [(5000,)]

    # Failures, each with a secret in play: wrong passwords on both sides (the wrong ones are secrets too).
    run("run", "analytics", expect=2, environ={**env, "SEC_PG_PASSWORD": WRONG})
    run("check", expect=2, environ={**env, "SEC_PG_PASSWORD": WRONG})
    run("run", "analytics", expect=2, environ={**env, "SEC_SF_PASSWORD": WRONG})
    run("check", expect=2, environ={**env, "SEC_SF_PASSWORD": WRONG})
    assert any("password authentication failed" in text or "wrong password" in text for text in produced)
    assert any("Snowflake refused user" in text for text in produced)

    # A chunk failure whose PostgreSQL error message carries the password: masked in output and ledger.
    with psycopg.connect(**password_pg["admin"]) as admin:
        admin.execute(
            sql.SQL(
                "CREATE FUNCTION public.leak() RETURNS trigger LANGUAGE plpgsql AS "
                "$$BEGIN RAISE EXCEPTION 'connection string password={} rejected'; END$$"
            ).format(sql.SQL(PG_SECRET))
        )
        admin.execute("CREATE TRIGGER leak BEFORE INSERT ON copy.events FOR EACH ROW EXECUTE FUNCTION public.leak()")
    run("run", "analytics", "--no-resume", expect=1)
    run("status", "analytics")
    ledger = _ledger_text(password_pg["admin"])
    assert "rejected" in ledger and "***" in ledger, "the error was recorded, masked"

    # Key-pair auth with an encrypted key: neither the passphrase nor the key appears.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(PASSPHRASE.encode()),
    )
    (tmp_path / "key.p8").write_bytes(pem)
    _config(
        config,
        secret_snowflake,
        password_pg,
        private_key_file_env="SEC_SF_KEY",
        private_key_passphrase_env="SEC_SF_PASSPHRASE",
    )
    key_env = {**env, "SEC_SF_KEY": str(tmp_path / "key.p8"), "SEC_SF_PASSPHRASE": PASSPHRASE}
    run("check", expect=2, environ=key_env)
    run("run", "analytics", expect=None, environ=key_env)  # resumes the failed run: its chunks fail to log in
    pem_lines = [line for line in pem.decode().splitlines() if len(line) > 40]

    everything = "\n".join([*produced, ledger])
    for secret in (SF_SECRET, PG_SECRET, PASSPHRASE, WRONG, *pem_lines):
        assert secret not in everything, f"a secret leaked: {secret[:12]}..."


# ---- least privileges ---------------------------------------------------------------------------------

LEAST_PRIVILEGE = {
    # The DBA creates the two schemas for the role; the role has no privilege on the database but CONNECT.
    "owns its schemas": (
        "GRANT CONNECT ON DATABASE {db} TO {role}; "
        "CREATE SCHEMA migration_status AUTHORIZATION {role}; CREATE SCHEMA copy AUTHORIZATION {role}"
    ),
    # Or: the role may create schemas in the database (and then owns them).
    "creates its schemas": "GRANT CONNECT, CREATE ON DATABASE {db} TO {role}",
}


@contextlib.contextmanager
def _role(pg_db: dict[str, Any]) -> Iterator[str]:
    role = f"cmdc_least_{uuid.uuid4().hex[:8]}"
    admin = admin_conninfo()
    with psycopg.connect(**admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE").format(sql.Identifier(role)))
    try:
        with psycopg.connect(**pg_db, autocommit=True) as conn:
            # Nothing through PUBLIC either: no TEMP, no CREATE in public (PostgreSQL 15's default).
            conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(pg_db["dbname"])))
            conn.execute("REVOKE ALL ON SCHEMA public FROM PUBLIC")
        yield role
    finally:
        with psycopg.connect(**pg_db, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(role)))
        with psycopg.connect(**admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.mark.parametrize("grants", list(LEAST_PRIVILEGE))
def test_copy_runs_with_the_least_privileges(snowflake_server, sf_db, pg_db, config_path, grants):
    from cm_datacopy_tests.helpers import sf_execute

    sf_execute(
        snowflake_server,
        sf_db,
        "USE SCHEMA PUBLIC",
        "CREATE TABLE EVENTS AS SELECT seq8()::NUMBER(38,0) AS ID, 'row ' || seq8() AS BODY "
        "FROM TABLE(GENERATOR(ROWCOUNT => 6000))",
    )
    with _role(pg_db) as role:
        with psycopg.connect(**pg_db, autocommit=True) as conn:
            for statement in LEAST_PRIVILEGE[grants].split("; "):
                conn.execute(statement.format(db=sql.Identifier(pg_db["dbname"]).as_string(), role=role))
        as_role = {**pg_db, "user": role}
        table = [{"source": "EVENTS", "target_schema": "copy", "chunk_key": "ID", "chunk_size": 1000}]
        write_config(config_path, snowflake_server, sf_db, as_role, table, chunk_timeout_seconds=5)
        assert cli(config_path, "check").returncode == 0
        result = cli(config_path, "run", "analytics")
        assert result.returncode == 0, result.stdout + result.stderr
        # What fence.claim_attempt needs to end a stale attempt: no pg_signal_backend, no pg_read_all_stats.
        second = psycopg.connect(**as_role)
        try:
            second.execute("SELECT txid_current()")  # a transaction with an xid, as a chunk's
            with psycopg.connect(**as_role, autocommit=True) as first:
                visible = first.execute(
                    "SELECT backend_xid IS NOT NULL, pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                    "WHERE pid = %s",
                    (second.info.backend_pid,),
                ).fetchall()
            assert visible == [(True, True)], "the role sees its own sessions' transactions and may end them"
        finally:
            second.close()
        assert pg_rows(pg_db, "SELECT count(*), count(DISTINCT id) FROM copy.events") == [(6000, 6000)]
        owners = pg_rows(
            pg_db,
            "SELECT nspname, pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname IN ('copy', 'migration_status')",
        )
        assert {owner for _, owner in owners} == {role}


def test_without_privileges_the_run_is_refused_clearly(snowflake_server, sf_db, pg_db, config_path):
    from cm_datacopy_tests.helpers import sf_execute

    sf_execute(snowflake_server, sf_db, "USE SCHEMA PUBLIC", "CREATE TABLE EVENTS (ID NUMBER(38,0))")
    with _role(pg_db) as role:
        with psycopg.connect(**pg_db, autocommit=True) as conn:
            conn.execute(
                sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                    sql.Identifier(pg_db["dbname"]), sql.Identifier(role)
                )
            )
        table = [{"source": "EVENTS", "target_schema": "copy"}]
        write_config(config_path, snowflake_server, sf_db, {**pg_db, "user": role}, table)
        check = cli(config_path, "check")
        assert check.returncode == 2 and "cannot create tables in schema 'copy'" in check.stderr
        result = cli(config_path, "run", "analytics")
        assert result.returncode == 2, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        assert "PostgreSQL refused: permission denied for database" in " ".join(result.stderr.split())
        assert pg_rows(pg_db, "SELECT to_regnamespace('migration_status'), to_regnamespace('copy')") == [(None, None)]
