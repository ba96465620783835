"""Run directories on disk and the results database over them."""

from grokbasin.store.db import connect, list_runs, query
from grokbasin.store.rundir import RunDir, atomic_write

__all__ = ["RunDir", "atomic_write", "connect", "list_runs", "query"]
