"""What ``cm-datacopy run`` shows while it copies.

On a terminal: a rich progress bar per table being copied (chunks done/total, rows, rows/s, time
left) and one for the whole run; messages and log records print above the bars. Elsewhere (cron,
CI, a pipe): one line per chunk and a summary per table, with a time stamp, nothing redrawn.
``-v`` prints the chunk lines on a terminal too, with bytes, checksums and the worker.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn
from rich.text import Text

from cm_datacopy.chunk import ChunkResult
from cm_datacopy.cli.output import logs_through
from cm_datacopy.ranges import Chunk
from cm_datacopy.run.publish import PublishResult
from cm_datacopy.run.resume import RunStart
from cm_datacopy.run.runner import RunPlan

OVERALL = "all tables"


@dataclass
class _Tally:
    """A table's (or the run's) chunks: as found at the start, and what this process did since."""

    total: int
    done_before: int
    rows_before: int
    open_here: int = 0  # chunks this process will try
    finished_here: int = 0  # tried: copied, failed or skipped
    copied: int = 0
    failed: int = 0
    rows: int = 0
    started: float | None = None

    @property
    def done(self) -> int:
        return self.done_before + self.copied

    def seconds(self) -> float:
        return time.monotonic() - self.started if self.started is not None else 0.0

    def rate(self) -> float | None:
        seconds = self.seconds()
        return self.rows / seconds if self.copied and seconds > 0 else None

    def eta(self) -> float | None:
        """Seconds left: the chunks left at this process's pace so far."""
        if not self.finished_here:
            return None
        return (self.open_here - self.finished_here) * self.seconds() / self.finished_here


def _rate_text(rate: float | None) -> str:
    return f"{rate:,.0f} rows/s" if rate else "– rows/s"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(seconds + 0.5)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class _TallyColumn(ProgressColumn):
    """Rows, rows/s and time left from the task's tally (rich's own speed counts chunks, not rows)."""

    def render(self, task: Task) -> Text:
        tally: _Tally = task.fields["tally"]
        rows = tally.rows_before + tally.rows
        return Text(f"{rows:>12,} rows  {_rate_text(tally.rate()):>16}  {_duration(tally.eta())} left")


class RunDisplay:
    """The ``progress`` callback of ``run_source``: draws bars (``live``) or prints lines."""

    def __init__(self, source: str, out: Console, stop: threading.Event, *, live: bool, verbose: bool) -> None:
        self.source, self.out, self.stop, self.live, self.verbose = source, out, stop, live, verbose
        self.tables: dict[str, _Tally] = {}
        self.overall: _Tally | None = None
        self.stopping = False
        self.start: RunStart | None = None
        self.bar: Progress | None = None
        self._tasks: dict[str, Any] = {}

    @contextlib.contextmanager
    def showing(self) -> Iterator[RunDisplay]:
        if not self.live:
            yield self
            return
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TextColumn("chunks"),
            _TallyColumn(),
            console=self.out,
        )
        with self.bar, logs_through(self.out):
            yield self
        self.bar = None

    # ---- output ------------------------------------------------------------------------------------

    def say(self, text: str) -> None:
        """A message line (markup allowed; names must be escaped by the caller)."""
        stamp = "" if self.live else time.strftime("%H:%M:%S ")
        self.out.print(stamp + text, soft_wrap=True)

    # ---- events from run_source --------------------------------------------------------------------

    def __call__(self, kind: str, item: Any) -> None:
        handler = getattr(self, f"on_{kind}", None)
        if handler is not None:
            handler(item)

    def on_start(self, start: RunStart) -> None:
        self.start = start
        self.say(f"{escape(self.source)}: {escape(start.reason)}")

    def on_plan(self, plan: RunPlan) -> None:
        open_chunks: dict[str, int] = {}
        for chunk in plan.todo:
            open_chunks[chunk.table_key] = open_chunks.get(chunk.table_key, 0) + 1
        for t in plan.tables:
            self.tables[t.table_key] = _Tally(
                t.chunks_total, t.chunks_done, t.rows_done, open_chunks.get(t.table_key, 0)
            )
        self.overall = _Tally(
            sum(t.chunks_total for t in plan.tables),
            sum(t.chunks_done for t in plan.tables),
            sum(t.rows_done for t in plan.tables),
            len(plan.todo),
        )
        busy = sum(1 for n in open_chunks.values() if n)
        earlier = f" ({self.overall.done_before} done earlier)" if self.overall.done_before else ""
        if plan.todo:
            self.say(f"{escape(self.source)}: {len(plan.todo)} chunks to copy in {busy} tables{earlier}")
        if self.verbose:
            for key, t in self.tables.items():
                self.say(f"  {escape(key)}: {t.done_before}/{t.total} chunks done, {t.open_here} to copy")
        if self.bar is not None and plan.todo:
            o = self.overall
            self._tasks[OVERALL] = self.bar.add_task(
                f"[bold]{OVERALL}", total=o.total, completed=o.done_before, tally=o
            )

    def on_chunk_start(self, chunk: Chunk) -> None:
        now = time.monotonic()
        tally = self.tables[chunk.table_key]
        if tally.started is None:
            tally.started = now
            if self.bar is not None:
                self._tasks[chunk.table_key] = self.bar.add_task(
                    escape(chunk.table_key), total=tally.total, completed=tally.done_before, tally=tally
                )
        if self.overall is not None and self.overall.started is None:
            self.overall.started = now

    def on_chunk(self, result: ChunkResult) -> None:
        key = result.task.table_key
        tally, overall = self.tables[key], self.overall
        assert overall is not None
        for t in (tally, overall):
            t.finished_here += 1
            if result.outcome == "copied":
                t.copied += 1
                t.rows += result.rows
            elif result.outcome == "failed":
                t.failed += 1
        if result.outcome == "failed":
            if self.stop.is_set() and result.retryable:  # rolled back because of the stop (or meanwhile)
                self.on_stopping(getattr(self.stop, "reason", None) or "stop requested")
                self.say(f"rolled back {escape(result.task.name)} (attempt {result.attempt}): the run is stopping")
            else:
                what = f"{result.task.name} (attempt {result.attempt}): {result.error}"
                self.say(f"[red]✗[/red] failed {escape(what)}")
        elif not self.live or self.verbose:
            self.say(self._chunk_line(result))
        if self.bar is not None:
            for name in (key, OVERALL):
                if name in self._tasks:
                    self.bar.update(self._tasks[name], completed=(tally if name == key else overall).done)
        if tally.finished_here == tally.open_here:
            self._table_finished(key, tally)

    def _chunk_line(self, r: ChunkResult) -> str:
        if r.outcome != "copied":
            what = "already done" if r.outcome == "already_done" else "taken over by a newer attempt"
            return f"skipped {escape(r.task.name)}: {what}"
        line = (
            f"copied {escape(r.task.name)}: {r.rows:,} rows in {r.seconds:.2f} s ({_rate_text(r.rows_per_second)}), "
            f"attempt {r.attempt}"
        )
        if self.verbose:
            checked = "checksums equal" if r.verified else "not verified"
            line += f", {r.bytes / 1e6:.1f} MB, {checked}, worker {escape(r.worker or '?')}"
            if r.rows_replaced:
                line += f", replaced {r.rows_replaced:,} rows"
            if r.nul_replaced:
                line += f", {r.nul_replaced:,} NUL bytes replaced"
        return line

    def _table_finished(self, key: str, t: _Tally) -> None:
        failed = f" ({t.failed} failed)" if t.failed else ""
        self.say(
            f"table {escape(key)}: {t.done}/{t.total} chunks done{failed}, {t.rows:,} rows copied in "
            f"{t.seconds():.1f} s ({_rate_text(t.rate())})"
        )
        if self.bar is not None and key in self._tasks:
            self.bar.update(self._tasks.pop(key), visible=False)

    def on_error(self, message: str) -> None:
        self.say(f"[red]✗[/red] {escape(message)}")

    def on_published(self, result: PublishResult) -> None:
        if result.published:
            how = f" ({escape(result.how)})" if result.how else ""
            self.say(
                f"published {escape(result.table_key)}: {result.rows:,} rows replaced {result.replaced_rows:,}{how}"
            )

    def on_publish_refused(self, message: str) -> None:
        self.say(f"[red]✗[/red] {escape(message)}")

    def on_stopping(self, reason: str) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.say(
            f"{escape(self.source)}: stopping ({reason}): no new chunk starts; chunks in flight roll back "
            "unless committing"
        )
