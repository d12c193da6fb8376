"""The code location Dagster loads (``[tool.dagster] module_name``): built from the config file."""

from cm_datacopy.dagster_defs import build_definitions

defs = build_definitions()
