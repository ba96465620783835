"""Run directories on disk and the results database over them.

``store.query`` (the module) selects LLC rows; the SQL helper is ``store.db.query``.
"""

from grokbasin.store.db import connect, list_runs
from grokbasin.store.rundir import RunDir, atomic_write

__all__ = ["RunDir", "atomic_write", "connect", "list_runs"]
