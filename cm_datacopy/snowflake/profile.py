"""Source profile before loading: per column, the facts that would break or bend the copy.

Measured by Snowflake in one aggregate query per table. A blocking fact (NUL bytes while
``nul_bytes: fail``) stops a new run before any data moves; the others are reported by
``cm-datacopy plan --profile`` so nobody is surprised after the load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cm_datacopy.config import SourceConfig
from cm_datacopy.snowflake.session import Session
from cm_datacopy.snowflake.sql import sf_ident
from cm_datacopy.typeplan import ColumnPlan


@dataclass
class ColumnProfile:
    column: str
    snowflake_type: str
    pg_type: str
    facts: list[str] = field(default_factory=list)
    blocking: list[str] = field(default_factory=list)


def _measures(col: ColumnPlan) -> list[tuple[str, str]]:
    """(name, aggregate SQL) pairs worth measuring for this column."""
    c = sf_ident(col.source_name)
    base = col.snowflake_type.split("(")[0]
    measures = [("nulls", f"COUNT_IF({c} IS NULL)")]
    if base == "VARCHAR":
        measures += [("nul_bytes", f"COUNT_IF(CONTAINS({c}, CHR(0)))"), ("max_length", f"MAX(LENGTH({c}))")]
    elif col.encoding == "json" and base in ("VARIANT", "OBJECT", "ARRAY"):
        measures += [("nul_escapes", f"COUNT_IF(CONTAINS(TO_VARCHAR({c}), '\\\\u0000'))")]
    elif base == "NUMBER":
        scale = int(col.snowflake_type.split(",")[1].rstrip(")"))
        measures += [("min", f"MIN({c})"), ("max", f"MAX({c})")]
        if scale > 0:
            measures += [("scale_used", f"COUNT_IF({c} <> ROUND({c}, 0))")]
    elif base == "FLOAT":
        measures += [("special", f"COUNT_IF({c} = 'NaN'::FLOAT OR {c} IN ('inf'::FLOAT, '-inf'::FLOAT))")]
    elif base in ("TIMESTAMP_TZ", "TIMESTAMP_LTZ"):
        measures += [
            ("offsets", f"COUNT_IF(DATE_PART(TIMEZONE_HOUR, {c}) <> 0 OR DATE_PART(TIMEZONE_MINUTE, {c}) <> 0)"),
            ("sub_us", f"COUNT_IF(EXTRACT(NANOSECOND FROM {c}) % 1000 <> 0)"),
        ]
    elif base in ("TIMESTAMP_NTZ", "TIME"):
        measures += [("sub_us", f"COUNT_IF(EXTRACT(NANOSECOND FROM {c}) % 1000 <> 0)")]
    return measures


_BLOCKING = {"nul_bytes", "nul_escapes"}


def profile_table(
    cfg: SourceConfig, sf: Session, ref: str, columns: list[ColumnPlan], *, blocking_only: bool = False
) -> list[ColumnProfile]:
    """Measure every column in one query (per-column queries if the source refuses one of them).

    ``blocking_only``: measure only what can stop a run (what ``run`` checks before moving data).
    """
    plans = [(col, [m for m in _measures(col) if not blocking_only or m[0] in _BLOCKING]) for col in columns]
    plans = [(col, ms) for col, ms in plans if ms]
    if not plans:
        return []
    flat = [(i, name, expr) for i, (_, ms) in enumerate(plans) for name, expr in ms]
    values: dict[tuple[int, str], Any] = {}
    try:
        row = sf.execute(f"SELECT {', '.join(expr for _, _, expr in flat)} FROM {ref}").fetchone()
        values = {(i, name): v for (i, name, _), v in zip(flat, row, strict=True)}
    except Exception:
        for i, name, expr in flat:
            try:
                values[(i, name)] = sf.execute(f"SELECT {expr} FROM {ref}").fetchone()[0]
            except Exception:
                values[(i, name)] = None
    return [_describe(cfg, col, {name: values.get((i, name)) for name, _ in ms}) for i, (col, ms) in enumerate(plans)]


def _describe(cfg: SourceConfig, col: ColumnPlan, m: dict[str, Any]) -> ColumnProfile:
    p = ColumnProfile(col.source_name, col.snowflake_type, col.pg_type)
    if m.get("nulls"):
        p.facts.append(f"{m['nulls']:,} NULLs")
    for key, what in (("nul_bytes", "values hold a NUL byte"), ("nul_escapes", "documents hold \\u0000")):
        if m.get(key):
            text = f"{m[key]:,} {what}, which PostgreSQL cannot store"
            if cfg.nul_bytes == "fail":
                p.blocking.append(text + "; set nul_bytes: replace (nul_replacement) or clean the source")
            else:
                p.facts.append(text + f"; they will be replaced by {cfg.nul_replacement!r}")
    if m.get("max_length") is not None:
        p.facts.append(f"longest value {m['max_length']:,} characters")
    if m.get("min") is not None and m.get("max") is not None:
        digits = max(len(str(int(abs(m["min"])))), len(str(int(abs(m["max"])))))
        p.facts.append(f"values from {m['min']} to {m['max']} ({digits} integer digits used)")
    if "scale_used" in m and m["scale_used"] is not None:
        p.facts.append(f"{m['scale_used']:,} values use the fractional part")
    if m.get("special"):
        p.facts.append(f"{m['special']:,} NaN/±inf values (kept: double precision holds them)")
    if m.get("offsets"):
        p.facts.append(f"{m['offsets']:,} values carry a non-UTC offset: timestamptz keeps the instant, not the offset")
    if m.get("sub_us"):
        p.facts.append(f"{m['sub_us']:,} values have sub-microsecond digits: they are truncated to microseconds")
    if any(v is None for k, v in m.items() if k not in ("max_length", "min", "max")):
        p.facts.append("some measures are not supported by this source")
    return p
