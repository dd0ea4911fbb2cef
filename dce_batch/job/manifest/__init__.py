"""The run manifest: one Parquet row per input per run under ``OUTPUT/_manifest/``, written once.

* :mod:`.schema`: the rows (one explicit Arrow schema, paths relative to OUTPUT and INPUT);
* :mod:`.store`: the folder (parts, commit records, summaries) and reading it at the start of a run;
* :mod:`.parts`: rolling parts written by the workers, committed by the driver;
* :mod:`.lease`: one run per OUTPUT;
* :mod:`.summary`: the run summary;
* :mod:`.maintenance`: ``dce-batch manifest upgrade|repair|unlock``.

Read a finished OUTPUT's manifest with any Parquet reader (``pd.read_parquet("OUTPUT/_manifest")``)
or with :func:`read_manifest`, which also checks it against its commit records.
"""

from dce_batch.job.manifest.schema import (
    FORMAT,
    MANIFEST_SCHEMA,
    STATUS_ERROR,
    STATUS_OK,
    STATUS_SKIPPED,
    ManifestRow,
    conform,
    rows_to_table,
)
from dce_batch.job.manifest.store import CommitRecord, ManifestState, ManifestStore, PartInfo
from dce_batch.job.manifest.summary import RunSummary
from dce_batch.storage import MANIFEST_DIR, Location

__all__ = [
    "FORMAT",
    "MANIFEST_DIR",
    "MANIFEST_SCHEMA",
    "STATUS_ERROR",
    "STATUS_OK",
    "STATUS_SKIPPED",
    "CommitRecord",
    "ManifestRow",
    "ManifestState",
    "ManifestStore",
    "PartInfo",
    "RunSummary",
    "conform",
    "read_manifest",
    "rows_to_table",
]


def read_manifest(output: str | Location, *, s3=None):
    """Every row under OUTPUT's manifest (an empty table with the schema when there is none),
    one per run and input; raises for a damaged manifest or one of an earlier format."""
    location = output if isinstance(output, Location) else Location.parse(output, s3)
    return ManifestStore.of(location).state(compact=False).rows
