"""Dagster definitions (filled in by the Dagster layer)."""

import dagster as dg

defs = dg.Definitions()
