"""The run registry: run folders (runs.py: create, find, read, update) indexed in a database
(store.py: SQLite under the hone home, or PostgreSQL; indexing.py: the rows written as runs start and change)
with names, versions, tags and lineage."""
from hone.registry.indexing import import_run_folders, record_start, sync_run
from hone.registry.runs import find_run, new_run_dir, read_record, update_record
from hone.registry.store import (
           Run,
           database_url,
           diff_runs,
           get_run,
           list_runs,
           parse_ref,
           remove_run,
           resolve_ref,
           set_tag,
)

__all__ = ["Run", "database_url", "diff_runs", "find_run", "get_run", "import_run_folders", "list_runs",
           "new_run_dir", "parse_ref", "read_record", "record_start", "remove_run", "resolve_ref", "set_tag",
           "sync_run", "update_record"]
