"""``cm-datacopy``: the replaced workflow's steps as commands, for use without the Dagster UI."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Iterator
from functools import wraps
from typing import Any

import click
import psycopg
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cm_datacopy.cli.output import console, err_console, print_status
from cm_datacopy.config import CONFIG_ENV, load_config
from cm_datacopy.errors import ConfigError, DatacopyError
from cm_datacopy.postgres.ledger import Ledger
from cm_datacopy.redact import RedactingFilter, redact
from cm_datacopy.run.check import check_source


def _setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(RedactingFilter())
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler], force=True)
    for noisy in ("snowflake.connector", "botocore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def _user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """A DatacopyError becomes one red message and its exit code, never a traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except DatacopyError as exc:
            err_console.print(f"[red]error:[/red] {escape(redact(str(exc)))}", markup=True, soft_wrap=True)
            sys.exit(exc.exit_code)
        except psycopg.errors.InsufficientPrivilege as exc:
            err_console.print(
                f"[red]error:[/red] PostgreSQL refused: {escape(str(exc).strip().splitlines()[0])}; grant the "
                "privileges in the README's 'Least privileges' (or run 'cm-datacopy check')",
                markup=True,
                soft_wrap=True,
            )
            sys.exit(2)
        except Exception as exc:
            # A connection lost mid-step (a PostgreSQL restart, a network cut, Snowflake gone): one line, exit 1.
            if not isinstance(exc, psycopg.OperationalError) and not type(exc).__module__.startswith("snowflake."):
                raise
            from cm_datacopy.chunk.task import classify

            err_console.print(
                f"error: lost a database connection: {classify(exc)[0]}; run the command again "
                "(a run resumes where it stopped)",
                markup=False,
                soft_wrap=True,
            )
            sys.exit(1)

    return wrapper


@click.group()
@click.option("--config", "-c", "config_file", envvar=CONFIG_ENV, help="config file (default: ./cm_datacopy.yaml)")
@click.option("--verbose", "-v", is_flag=True, help="log progress details")
@click.pass_context
def main(ctx: click.Context, config_file: str | None, verbose: bool) -> None:
    """Copy Snowflake tables into PostgreSQL in chunks that resume and never duplicate."""
    _setup_logging(verbose)
    ctx.obj = {"config_file": config_file}


def _source(ctx: click.Context, name: str | None) -> Any:
    return load_config(ctx.obj["config_file"]).source(name)


@main.command()
@click.argument("source", required=False)
@click.pass_context
@_user_errors
def validate(ctx: click.Context, source: str | None) -> None:
    """Validate the config file (all sources, or SOURCE). Writes nothing."""
    config = load_config(ctx.obj["config_file"])
    names = [config.source(source).name] if source else list(config.sources)
    for name in names:
        cfg = config.sources[name]
        console.print(f"[green]ok[/green] {name}: {len(cfg.tables)} tables → {cfg.postgres.host}/{cfg.postgres.dbname}")


@main.command()
@click.argument("source", required=False)
@click.pass_context
@_user_errors
def check(ctx: click.Context, source: str | None) -> None:
    """Test the connections: Snowflake login and tables, PostgreSQL login and write access."""
    cfg = _source(ctx, source)
    problems = check_source(cfg)
    for problem in problems:
        err_console.print(f"[red]✗[/red] {escape(problem)}", soft_wrap=True)
    if problems:
        sys.exit(2)
    console.print(
        f"[green]ok[/green] {cfg.name}: Snowflake and PostgreSQL reachable, {len(cfg.tables)} tables readable"
    )


@main.command()
@click.argument("source", required=False)
@click.option("--profile", "with_profile", is_flag=True, help="also measure each column's values in Snowflake")
@click.pass_context
@_user_errors
def plan(ctx: click.Context, source: str | None, with_profile: bool) -> None:
    """Print the type plan and chunk plan of every table (and the source profile). Writes nothing."""
    from cm_datacopy.run.plan import preview

    cfg = _source(ctx, source)
    plans, blocking = preview(cfg, profile_columns=with_profile)
    for table_plan in plans:
        t = table_plan.table
        state = "exists, fits" if table_plan.target_exists else "will be created"
        console.print(f"\n[bold]{escape(table_plan.source_ref)}[/bold] → {escape(t.key)} ({state})")
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
        shown = table_plan.chunks if len(table_plan.chunks) <= 12 else [*table_plan.chunks[:6], *table_plan.chunks[-6:]]
        for chunk in shown:
            chunks.add_row(f"{chunk.index:05d}", escape(chunk.describe()))
        key = escape(t.chunk_key or "(no key: one chunk)")
        console.print(f"{len(table_plan.chunks)} chunks by {key}, ~{t.chunk_size} rows each")
        console.print(chunks)
    for problem in blocking:
        err_console.print(f"[red]✗[/red] {escape(problem)}", soft_wrap=True)
    if blocking:
        err_console.print("a run would stop before copying anything until these are fixed")
        sys.exit(2)


@main.command()
@click.argument("source", required=False)
@click.option("--no-resume", is_flag=True, default=None, help="start a new run even if one can be resumed")
@click.pass_context
@_user_errors
def run(ctx: click.Context, source: str | None, no_resume: bool | None) -> None:
    """Copy SOURCE: resume its newest unfinished run (within resume_max_age) or start a new one."""
    from cm_datacopy.run.runner import Stop, run_source

    cfg = _source(ctx, source)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[rows]:,} rows"),
        console=console,
        transient=not console.is_terminal,
    ) as bar:
        task = bar.add_task(cfg.name, total=None, rows=0)

        def progress(kind: str, item: Any) -> None:
            if kind == "start":
                bar.console.print(f"{cfg.name}: {item.reason}")
            elif kind == "plan":
                bar.update(task, total=len(item.todo))
            elif kind == "chunk" and item.outcome == "failed":
                bar.update(task, advance=1)
                bar.console.print(
                    f"[red]✗[/red] {escape(f'chunk {item.task.name} (attempt {item.attempt}) failed: {item.error}')}",
                    soft_wrap=True,
                )
            elif kind == "chunk":
                bar.update(task, advance=1, rows=bar.tasks[task].fields["rows"] + item.rows)
            elif kind == "published" and item.published:
                bar.console.print(
                    f"published {escape(item.table_key)}: {item.rows:,} rows replaced {item.replaced_rows:,}"
                )
            elif kind == "publish_refused":
                bar.console.print(f"[red]✗[/red] {escape(str(item))}", soft_wrap=True)

            elif kind == "stopping":
                bar.console.print(
                    f"{cfg.name}: stopping ({item}): no new chunk starts; chunks in flight roll back unless committing"
                )

        stop = Stop()
        with _stop_on_signals(stop):
            outcome = run_source(cfg, no_resume=no_resume, progress=progress, stop=stop)
    if outcome.lock_lost:
        err_console.print(
            f"error: run {outcome.run_id} lost the lock of source {cfg.name!r} (frozen longer than "
            f"stale_lock_seconds, or its session was ended); stopped after {outcome.chunks_copied} chunks. "
            "Another run may own the source now: see 'cm-datacopy status'"
        )
        sys.exit(3)
    if outcome.stopped:
        console.print(
            f"[yellow]stopped[/yellow] run {outcome.run_id} ({outcome.stopped}) after {outcome.chunks_copied} chunks, "
            f"{outcome.rows:,} rows; chunks in flight were rolled back. Run 'cm-datacopy run {cfg.name}' to resume"
        )
        sys.exit(130 if outcome.stopped == "SIGINT" else 143)
    colour = "green" if outcome.status == "completed" else "red"
    console.print(
        f"[{colour}]{outcome.status}[/{colour}] run {outcome.run_id}: {outcome.chunks_copied} chunks, "
        f"{outcome.rows:,} rows in {outcome.seconds:.1f} s ({outcome.rows_per_second:,.0f} rows/s)"
    )
    if outcome.status != "completed":
        console.print(f"run 'cm-datacopy run {cfg.name}' again to resume; 'cm-datacopy status {cfg.name}' shows errors")
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
@click.pass_context
@_user_errors
def status(ctx: click.Context, source: str | None, run_id: str | None) -> None:
    """Per table: chunks done/total, rows, attempts; failed chunks with their last error."""
    cfg = _source(ctx, source)
    with psycopg.connect(**cfg.postgres.connect_kwargs()) as pg:
        print_status(pg, Ledger(cfg.postgres.ledger_schema), cfg.name, run_id)


@main.command()
@click.argument("source", required=False)
@click.option("--run-id", help="a specific run (default: the newest)")
@click.pass_context
@_user_errors
def verify(ctx: click.Context, source: str | None, run_id: str | None) -> None:
    """Re-verify a run without copying: per chunk, rows and checksums on both sides; names differing keys."""
    from cm_datacopy.run.verify import verify_run

    cfg = _source(ctx, source)
    if run_id is None:
        ledger = Ledger(cfg.postgres.ledger_schema)
        with psycopg.connect(**cfg.postgres.connect_kwargs()) as pg:
            latest = ledger.latest_run(pg, cfg.name) if ledger.exists(pg) else None
        if latest is None:
            raise DatacopyError(f"no runs of {cfg.name} to verify")
        run_id = latest.run_id
    results = verify_run(cfg, run_id)
    table = Table("table", "checked in", "chunks", "Snowflake rows", "PostgreSQL rows", "verified")
    for t in results:
        table.add_row(
            t.table_key,
            t.relation,
            str(len(t.chunks)),
            f"{t.source_rows:,}",
            f"{t.target_rows:,}",
            "[green]yes[/green]" if t.ok else "[red]NO[/red]",
        )
    console.print(f"run {run_id}")
    console.print(table)
    problems = [line for t in results for line in t.mismatches]
    for line in problems:
        err_console.print(f"[red]✗[/red] {escape(line)}", soft_wrap=True)
    if problems:
        sys.exit(1)


@main.command()
@click.option("--workdir", default=".demo", show_default=True, help="where the demo keeps its servers' files")
@click.option("--rows", default=20_000, show_default=True, help="rows per sample table")
@_user_errors
def demo(workdir: str, rows: int) -> None:
    """A whole migration on embedded stand-ins: fakesnow as Snowflake, an embedded PostgreSQL."""
    from cm_datacopy.cli.demo import run_demo

    sys.exit(run_demo(workdir, rows, console))


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


if __name__ == "__main__":
    main()
