"""Run tags: ours, and the Dagster tags our sensors read (Dagster exports no constants for them).

A Dagster run that copies chunks carries the source and, once known, the migration run it works
on; a run started by the auto-resume sensor carries how many automatic resumes led to it.
"""

from collections.abc import Mapping

SOURCE = "cm_datacopy/source"
MIGRATION_RUN = "cm_datacopy/migration_run_id"
RESUME_ATTEMPT = "cm_datacopy/resume_attempt"
RESUMED_FROM = "cm_datacopy/resumed_from"

# Dagster's own: a one-partition run, a partition-range run (backfill policies), and a failed run
# that Dagster's run retries will retry.
PARTITION = "dagster/partition"
RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
WILL_RETRY = "dagster/will_retry"


def resume_attempt(tags: Mapping[str, str]) -> int:
    """How many automatic resumes in a row led to the run with these tags (0: started by a person)."""
    return int(tags.get(RESUME_ATTEMPT) or 0)
