"""The one resource: where the config file is. Everything else (connections, secrets) comes from it.

Runs read the config when they start, not when definitions load, so a run always uses the file as it
is now and secrets are read from the environment of the process that copies.
"""

from __future__ import annotations

import dagster as dg

from cm_datacopy.config import SourceConfig, config_path, load_config


class DatacopyConfig(dg.ConfigurableResource):
    """Path of the cm_datacopy config file (default: ``$CM_DATACOPY_CONFIG`` or ``./cm_datacopy.yaml``)."""

    path: str = ""

    def source(self, name: str) -> SourceConfig:
        return load_config(self.path or None).source(name)

    @property
    def resolved_path(self) -> str:
        return str(config_path(self.path or None))
