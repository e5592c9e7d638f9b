"""Dataset ingestion for data-centric FL: uploads in, checked columns and a schema out.

Pure functions over bytes and numpy arrays (no Flask, no database, no torch); the Node's dataset
service calls them. The contract is docs/data-centric.md, "Datasets":

* `ingest` reads a CSV, NPZ or safetensors upload (`detect_format`), checks every column
  (`columns`), matches an optional declared schema (`schema`) and returns `Ingested`;
* `ingest_mock` reads an owner's mock sample against the dataset's schema, and `generate_mock`
  draws one from the schema alone (`mock`);
* `dump_columns` / `load_columns` are the stored form (safetensors) and `columns_to_csv` the
  CSV download of a mock.

Every refusal is a `DatasetError` (HTTP 422) whose message names the row and column at fault.
"""

from pygrid.datasets.columns import DatasetError
from pygrid.datasets.csvfile import columns_to_csv
from pygrid.datasets.formats import FORMATS, detect_format, dump_columns, load_columns
from pygrid.datasets.ingestion import Ingested, ingest, ingest_mock
from pygrid.datasets.mock import generate_mock

__all__ = [
    "FORMATS",
    "DatasetError",
    "Ingested",
    "columns_to_csv",
    "detect_format",
    "dump_columns",
    "generate_mock",
    "ingest",
    "ingest_mock",
    "load_columns",
]
