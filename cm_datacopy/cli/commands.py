"""``cm-datacopy``: the replaced workflow's steps as commands, for use without the Dagster UI.

Exit codes (docs/commands.md): 0 done; 1 a run started but is not complete (failed chunks, a refused
publish, a connection lost mid-run: run again to resume), or ``verify`` found differences; 2 cannot
start (config, connection, plan, a ledger schema holding other tables); 3 the source is busy or the
run lost its lock; 130/143 stopped by SIGINT/SIGTERM (resumable).
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Callable, Iterator
from functools import wraps
from pathlib import Path
from typing import Any

import click
import psycopg
from rich.markup import escape
from rich.table import Table

from cm_datacopy.cli.output import (
    console,
    err_console,
    print_history,
    print_json,
    print_overview,
    print_status,
    setup_logging,
)
from cm_datacopy.config import CONFIG_ENV, DEFAULT_CONFIG_FILE, SourceConfig, load_config
from cm_datacopy.errors import ConfigError, ConnectionCheckError, DatacopyError
from cm_datacopy.postgres.ledger import Ledger, LedgerConflict
from cm_datacopy.redact import outside
from cm_datacopy.run import status as run_status
from cm_datacopy.run.check import check_source

LOST_CONNECTION_EXIT = 1  # a run that started and lost a database: it resumes when run again


def _user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """A DatacopyError becomes one red message and its exit code, never a traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except DatacopyError as exc:
            err_console.print(f"[red]error:[/red] {escape(str(exc))}", markup=True, soft_wrap=True)
            sys.exit(exc.exit_code)
        except psycopg.errors.InsufficientPrivilege as exc:
            err_console.print(
                f"[red]error:[/red] PostgreSQL refused: {escape(outside(exc))}; grant the privileges in "
                "docs/configuration.md 'Least privileges' (or run 'cm-datacopy check')",
                markup=True,
                soft_wrap=True,
            )
            sys.exit(2)
        except Exception as exc:
            # A connection lost mid-step (a PostgreSQL restart, a network cut, Snowflake gone): one line.
            if not isinstance(exc, psycopg.OperationalError) and not type(exc).__module__.startswith("snowflake."):
                raise
            from cm_datacopy.chunk.task import classify

            err_console.print(
                f"[red]error:[/red] lost a database connection: {escape(classify(exc)[0])}; run the command again "
                "(a run resumes where it stopped)",
                markup=True,
                soft_wrap=True,
            )
            sys.exit(LOST_CONNECTION_EXIT)

    return wrapper


def _verbose(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    """``-v`` works before or after the command name."""
    if value:
        ctx.find_root().ensure_object(dict)["verbose"] = True
        setup_logging(True)
    return value


verbose_option = click.option(
    "--verbose", "-v", is_flag=True, expose_value=False, callback=_verbose, help="more detail (and INFO logs)"
)
json_option = click.option("--json", "as_json", is_flag=True, help="print JSON (keys: docs/commands.md)")


def _is_verbose(ctx: click.Context) -> bool:
    return bool(ctx.find_root().obj.get("verbose"))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config", "-c", "config_file", envvar=CONFIG_ENV, help=f"config file (default: ./{DEFAULT_CONFIG_FILE})"
)
@click.option("--verbose", "-v", is_flag=True, help="more detail (and INFO logs)")
@click.version_option(package_name="cm_datacopy", prog_name="cm-datacopy")
@click.pass_context
def main(ctx: click.Context, config_file: str | None, verbose: bool) -> None:
    """Copy Snowflake tables into PostgreSQL in chunks that resume and never duplicate."""
    setup_logging(verbose)
    ctx.obj = {"config_file": config_file, "verbose": verbose}


def _source(ctx: click.Context, name: str | None) -> SourceConfig:
    return load_config(ctx.obj["config_file"]).source(name)


@contextlib.contextmanager
def _pg(cfg: SourceConfig) -> Iterator[psycopg.Connection[Any]]:
    """A connection to the source's PostgreSQL; failing to connect is 'cannot start' (exit 2)."""
    pg = cfg.postgres
    try:
        conn = psycopg.connect(**pg.connect_kwargs())
    except psycopg.OperationalError as exc:
        raise ConnectionCheckError(
            f"cannot connect to PostgreSQL {pg.host}:{pg.port} as {pg.user!r}, database {pg.dbname!r}: "
            f"{outside(exc).split('failed: ')[-1]}; see 'cm-datacopy check'"
        ) from None
    with conn:
        yield conn


@main.command()
@click.argument("source", required=False)
@verbose_option
@click.pass_context
@_user_errors
def validate(ctx: click.Context, source: str | None) -> None:
    """Validate the config file (all sources, or SOURCE). Writes nothing."""
    config = load_config(ctx.obj["config_file"])
    names = [config.source(source).name] if source else list(config.sources)
    for name in names:
        cfg = config.sources[name]
        console.print(
            f"[green]ok[/green] {name}: {len(cfg.tables)} tables → {escape(cfg.postgres.host)}/"
            f"{escape(cfg.postgres.dbname)}, ledger schema {cfg.postgres.ledger_schema}"
        )


@main.command()
@click.argument("source", required=False)
@verbose_option
@click.pass_context
@_user_errors
def check(ctx: click.Context, source: str | None) -> None:
    """Test the connections: Snowflake login and tables, PostgreSQL login, write access, ledger schema."""
    cfg = _source(ctx, source)
    problems = check_source(cfg)
    for problem in problems:
        err_console.print(f"[red]✗[/red] {escape(problem)}", soft_wrap=True)
    if problems:
        sys.exit(2)
    console.print(
        f"[green]ok[/green] {cfg.name}: Snowflake and PostgreSQL reachable, {len(cfg.tables)} tables readable"
    )


PLAN_CHUNKS_EACH_END = 6  # a longer plan shows its first and last 6 chunks and says how many are between
PLAN_CHUNKS_ALL = 16  # plans up to this many chunks are shown whole


@main.command()
@click.argument("source", required=False)
@click.option("--profile", "with_profile", is_flag=True, help="also measure each column's values in Snowflake")
@click.option(
    "--all-chunks",
    is_flag=True,
    help=f"list every chunk (default: the first and last ones when over {PLAN_CHUNKS_ALL})",
)
@json_option
@verbose_option
@click.pass_context
@_user_errors
def plan(ctx: click.Context, source: str | None, with_profile: bool, all_chunks: bool, as_json: bool) -> None:
    """Print the type plan and chunk plan of every table (and the source profile). Writes nothing."""
    from cm_datacopy.run.plan import preview

    cfg = _source(ctx, source)
    with _pg(cfg) as pg:
        Ledger(cfg.postgres.ledger_schema).exists(pg)  # a ledger schema holding other tables: say so first
    plans, blocking = preview(cfg, profile_columns=with_profile)
    if as_json:
        print_json({"source": cfg.name, "tables": [_plan_json(p) for p in plans], "blocking": blocking})
    for table_plan in [] if as_json else plans:
        t = table_plan.table
        state = "exists, fits" if table_plan.target_exists else "will be created"
        console.print(f"\n[bold]{escape(table_plan.source_ref)}[/bold] → {escape(t.key)} ({state}, mode {t.mode})")
        types = Table("column", "Snowflake", "PostgreSQL", "nullable")
        for col in table_plan.columns:
            types.add_row(
                escape(f"{col.source_name} → {col.target_name}"), col.snowflake_type, col.pg_type, str(col.nullable)
            )
        console.print(types)
        for p in table_plan.profile or []:
            for text in p.blocking:
                console.print(f"  [red]BLOCKING[/red] {escape(p.column)}: {escape(text)}")
            if p.facts:
                console.print(f"  {escape(p.column)}: " + escape("; ".join(p.facts)))
        chunks = Table("chunk", "range")
        count, end = len(table_plan.chunks), PLAN_CHUNKS_EACH_END
        for position, chunk in enumerate(table_plan.chunks):
            if all_chunks or count <= PLAN_CHUNKS_ALL or position < end or position >= count - end:
                chunks.add_row(f"{chunk.index:05d}", escape(chunk.describe()))
            elif position == end:
                chunks.add_row("…", f"… {count - 2 * end} more chunks (plan --all-chunks lists them) …")
        if t.chunk_key:
            console.print(f"{count} chunks by {escape(t.chunk_key)}, ~{t.chunk_size:,} rows each")
        else:
            console.print("1 chunk: no chunk_key, the table is copied whole")
        console.print(chunks)
    for problem in blocking:
        err_console.print(f"[red]✗[/red] {escape(problem)}", soft_wrap=True)
    if blocking:
        err_console.print("a run would stop before copying anything until these are fixed")
        sys.exit(2)


def _plan_json(p: Any) -> dict[str, Any]:
    t = p.table
    return {
        "table": t.key,
        "source_table": p.source_ref,
        "target_exists": p.target_exists,
        "mode": t.mode,
        "chunk_key": t.chunk_key,
        "chunk_size": t.chunk_size,
        "columns": [
            {
                "source": c.source_name,
                "target": c.target_name,
                "snowflake_type": c.snowflake_type,
                "postgres_type": c.pg_type,
                "nullable": c.nullable,
            }
            for c in p.columns
        ],
        "chunks": [
            {
                "chunk": c.index,
                "lower": c.lower,
                "upper": c.upper,
                "include_nulls": c.include_nulls,
                "range": c.describe(),
            }
            for c in p.chunks
        ],
        "profile": None
        if p.profile is None
        else [{"column": f.column, "facts": f.facts, "blocking": f.blocking} for f in p.profile],
    }


@main.command()
@click.argument("source", required=False)
@click.option("--no-resume", is_flag=True, default=None, help="start a new run even if one can be resumed")
@verbose_option
@click.pass_context
@_user_errors
def run(ctx: click.Context, source: str | None, no_resume: bool | None) -> None:
    """Copy SOURCE: resume its newest unfinished run (within resume_max_age) or start a new one.

    Ctrl-C or SIGTERM stops it within seconds (no new chunk starts, chunks in flight roll back);
    running it again resumes.
    """
    from cm_datacopy.cli.progress import RunDisplay
    from cm_datacopy.run.runner import Stop, run_source

    cfg = _source(ctx, source)
    stop = Stop()
    display = RunDisplay(cfg.name, console, stop, live=console.is_terminal, verbose=_is_verbose(ctx))
    try:
        with display.showing(), _stop_on_signals(stop):
            outcome = run_source(cfg, no_resume=no_resume, progress=display, stop=stop)
    except KeyboardInterrupt:  # a second Ctrl-C: the chunks in flight were ended, the run recorded failed
        err_console.print(f"interrupted; run 'cm-datacopy run {cfg.name}' to resume", markup=False)
        sys.exit(130)
    if outcome.lock_lost:
        err_console.print(
            f"error: run {outcome.run_id} lost the lock of source {cfg.name!r} (frozen longer than "
            f"stale_lock_seconds, or its session was ended); stopped after {outcome.chunks_copied} chunks. "
            "Another run may own the source now: see 'cm-datacopy status'",
            markup=False,
        )
        sys.exit(3)
    again = f"'cm-datacopy run {cfg.name}'"
    if outcome.stopped:
        console.print(
            f"[yellow]stopped[/yellow] run {outcome.run_id} ({outcome.stopped}) after {outcome.chunks_copied} "
            f"chunks, {outcome.rows:,} rows; chunks in flight were rolled back. Run {escape(again)} to resume"
        )
        sys.exit(130 if outcome.stopped == "SIGINT" else 143)
    colour = "green" if outcome.status == "completed" else "red"
    published = ", ".join(escape(p.table_key) for p in outcome.published if p.published)
    if outcome.chunks_total == 0:
        did = f"nothing left to copy; published {published}" if published else "nothing left to do"
    else:
        did = (
            f"copied {outcome.chunks_copied} of {outcome.chunks_total} chunks, {outcome.rows:,} rows in "
            f"{outcome.seconds:.1f} s ({outcome.rows_per_second:,.0f} rows/s)"
        )
    console.print(f"[{colour}]{outcome.status}[/{colour}] run {outcome.run_id}: {did}")
    if outcome.status != "completed":
        console.print(f"run {escape(again)} again to resume; 'cm-datacopy status {cfg.name}' shows why")
        sys.exit(1)


@contextlib.contextmanager
def _stop_on_signals(stop: Any) -> Iterator[None]:
    """Ctrl-C (SIGINT) and SIGTERM ask the run to stop; a second Ctrl-C still interrupts at once."""

    def handler(signum: int, _frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.request(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@main.command()
@click.argument("source", required=False)
@click.option("--run-id", help="a specific run (default: the newest)")
@json_option
@verbose_option
@click.pass_context
@_user_errors
def status(ctx: click.Context, source: str | None, run_id: str | None, as_json: bool) -> None:
    """Without SOURCE: every configured source on one line. With SOURCE: its latest (or given) run per
    table, why a table is not done, the failed chunks and the last error."""
    config = load_config(ctx.obj["config_file"])
    if source is None and run_id is None:
        _overview(list(config.sources.values()), as_json)
        return
    cfg = config.source(source)
    with _pg(cfg) as pg:
        report = run_status.run_status(
            pg, Ledger(cfg.postgres.ledger_schema), cfg.name, run_id, stalled_after=cfg.chunk_timeout_seconds
        )
    if as_json:
        print_json(run_status.to_json(cfg.name, report))
    else:
        print_status(cfg.name, report, run_id)


def _overview(sources: list[SourceConfig], as_json: bool) -> None:
    rows: list[tuple[str, run_status.RunStatus | None, str | None]] = []
    for cfg in sources:
        try:
            with _pg(cfg) as pg:
                ledger = Ledger(cfg.postgres.ledger_schema)
                report = run_status.run_status(pg, ledger, cfg.name, stalled_after=cfg.chunk_timeout_seconds)
                rows.append((cfg.name, report, None))
        except LedgerConflict:
            raise  # the database holds another system's tables: one message for all, not one per source
        except DatacopyError as exc:
            rows.append((cfg.name, None, str(exc)))
    if as_json:
        print_json({"sources": [run_status.to_json(name, report, error) for name, report, error in rows]})
    else:
        print_overview(rows)
        console.print("'cm-datacopy status SOURCE' shows a source's tables and errors")
    if any(error for _, _, error in rows):
        sys.exit(2)


@main.command()
@click.argument("source", required=False)
@click.option("--limit", default=20, show_default=True, help="newest runs shown")
@json_option
@verbose_option
@click.pass_context
@_user_errors
def history(ctx: click.Context, source: str | None, limit: int, as_json: bool) -> None:
    """The runs of SOURCE, newest first: status, resumes, chunks and rows, last error."""
    cfg = _source(ctx, source)
    with _pg(cfg) as pg:
        reports = run_status.history(
            pg, Ledger(cfg.postgres.ledger_schema), cfg.name, limit, stalled_after=cfg.chunk_timeout_seconds
        )
    if as_json:
        print_json({"source": cfg.name, "runs": [run_status.to_json(cfg.name, r) for r in reports]})
    else:
        print_history(cfg.name, reports)


@main.command()
@click.argument("source", required=False)
@click.option("--run-id", help="a specific run (default: the newest)")
@json_option
@verbose_option
@click.pass_context
@_user_errors
def verify(ctx: click.Context, source: str | None, run_id: str | None, as_json: bool) -> None:
    """Re-verify a run without copying: per chunk, rows and checksums on both sides; names differing keys."""
    from cm_datacopy.run.verify import verify_run

    cfg = _source(ctx, source)
    if run_id is None:
        ledger = Ledger(cfg.postgres.ledger_schema)
        with _pg(cfg) as pg:
            latest = ledger.latest_run(pg, cfg.name) if ledger.exists(pg) else None
        if latest is None:
            raise DatacopyError(f"no runs of {cfg.name} to verify")
        run_id = latest.run_id
    results = verify_run(cfg, run_id)
    problems = [line for t in results for line in t.mismatches]
    if as_json:
        print_json(
            {
                "source": cfg.name,
                "run_id": run_id,
                "ok": not problems,
                "tables": [
                    {
                        "table": t.table_key,
                        "relation": t.relation,
                        "chunks_checked": len(t.chunks),
                        "chunks_open": t.chunks_open,
                        "source_rows": t.source_rows,
                        "target_rows": t.target_rows,
                        "ok": t.ok,
                        "mismatches": t.mismatches,
                    }
                    for t in results
                ],
            }
        )
    else:
        table = Table("table", "checked in", "chunks", "Snowflake rows", "PostgreSQL rows", "verified")
        for t in results:
            table.add_row(
                escape(t.table_key),
                escape(t.relation),
                str(len(t.chunks)) + (f" ({t.chunks_open} not done: skipped)" if t.chunks_open else ""),
                f"{t.source_rows:,}",
                f"{t.target_rows:,}",
                "[green]yes[/green]" if t.ok else "[red]NO[/red]",
            )
        console.print(f"run {run_id}")
        console.print(table)
        for line in problems:
            err_console.print(f"[red]✗[/red] {escape(line)}", soft_wrap=True)
    if problems:
        sys.exit(1)


@main.command()
@click.option("--output", "-o", default=DEFAULT_CONFIG_FILE, show_default=True, help="where to write it")
@click.option("--force", is_flag=True, help="overwrite an existing file")
@_user_errors
def init(output: str, force: bool) -> None:
    """Write a starter config with comments: two sources, one per Snowflake auth method."""
    from cm_datacopy.cli.starter import write_starter

    write_starter(Path(output), force=force)
    console.print(
        f"wrote {escape(output)}: edit the accounts, users, databases and tables, export the variables its "
        "*_env fields name, then run 'cm-datacopy validate' and 'cm-datacopy check'"
    )


@main.command()
@click.option("--workdir", default=".demo", show_default=True, help="where the demo keeps its servers' files")
@click.option("--rows", default=20_000, show_default=True, help="rows per sample table")
@click.option("--keep", is_flag=True, help="leave the stand-ins running to try other commands on them")
@click.option("--stop", "stop_kept", is_flag=True, help="stop the stand-ins a 'demo --keep' left running")
@_user_errors
def demo(workdir: str, rows: int, keep: bool, stop_kept: bool) -> None:
    """A whole migration on embedded stand-ins: fakesnow as Snowflake, an embedded PostgreSQL."""
    from cm_datacopy.cli.demo import run_demo, stop_demo

    if stop_kept:
        sys.exit(stop_demo(workdir, console))
    sys.exit(run_demo(workdir, rows, console, keep=keep))


@main.command()
@click.option("--workdir", default=".demo-ui", show_default=True, help="where the stand-ins and Dagster keep files")
@click.option("--rows", default=20_000, show_default=True, help="rows per sample table")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=3000, show_default=True)
@_user_errors
def ui(workdir: str, rows: int, host: str, port: int) -> None:
    """The Dagster UI and daemon on the demo's stand-ins: assets, backfills, the auto-resume sensor."""
    try:
        from cm_datacopy.dagster_defs.ui import run_ui
    except ModuleNotFoundError as exc:  # a core install: no [dagster] extra
        if not (exc.name or "").startswith("dagster"):
            raise
        raise ConfigError(str(exc)) from None

    sys.exit(run_ui(workdir, rows, host, port, console))


@main.command(
    "dagster-daemon",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def dagster_daemon(args: tuple[str, ...]) -> None:
    """dagster-daemon (same arguments) whose backfill loop wakes every second, not every 30 s, and whose
    storage keeps its PostgreSQL connections open.

    Run it where you would run `dagster-daemon run`; CM_DATACOPY_BACKFILL_LOOP_SECONDS sets the interval.
    """
    try:
        from cm_datacopy.dagster_defs.daemon import main as daemon_main
    except ModuleNotFoundError as exc:  # a core install: no [dagster] extra
        if not (exc.name or "").startswith("dagster"):
            raise
        raise ConfigError(str(exc)) from None
    daemon_main(list(args))


if __name__ == "__main__":
    main()
