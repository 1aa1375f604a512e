"""The run registry: run folders (runs.py: create, find, read, update) indexed in a database
(store.py: SQLite under the hone home, or PostgreSQL) with names, versions, tags and lineage."""
from hone.registry.runs import find_run, new_run_dir, read_record, update_record
from hone.registry.store import (
                                 Run,
                                 database_url,
                                 diff_runs,
                                 get_run,
                                 import_run_folders,
                                 list_runs,
                                 parse_ref,
                                 record_start,
                                 remove_run,
                                 resolve_ref,
                                 set_tag,
                                 sync_run,
)

__all__ = ["Run", "database_url", "diff_runs", "find_run", "get_run", "import_run_folders", "list_runs",
           "new_run_dir", "parse_ref", "read_record", "record_start", "remove_run", "resolve_ref", "set_tag",
           "sync_run", "update_record"]
