"""The run registry: every run recorded in a database (SQLite under the hone home, or PostgreSQL)."""
from hone.registry.refs import parse_ref, resolve_ref
from hone.registry.store import (Run, database_url, diff_runs, get_run, import_run_folders, list_runs, record_start,
                                 remove_run, set_tag, sync_run)

__all__ = ["Run", "database_url", "diff_runs", "get_run", "import_run_folders", "list_runs", "parse_ref",
           "record_start", "remove_run", "resolve_ref", "set_tag", "sync_run"]
