"""Run configs in the ``run_configs`` table of a local store's SQLite catalog."""

from __future__ import annotations

import os
import time

from ..run_configs import RunConfigStore
from .catalog import Catalog

RUNS_TABLE_SQL = """CREATE TABLE IF NOT EXISTS run_configs (
    name TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    created REAL NOT NULL
)"""


class LocalRunConfigStore(RunConfigStore):
    """Run configs in the ``run_configs`` table of a local store's SQLite catalog.

    Args and raises: as :class:`~dacapo_store.LocalWeightsStore` (``basedir``, ``read_only``).
    """

    def __init__(self, basedir: str | os.PathLike, read_only: bool = False) -> None:
        self.catalog = Catalog.of(basedir, read_only)
        if not self.catalog.read_only and self.catalog.exists():
            with self.catalog.transaction() as db:
                db.execute(RUNS_TABLE_SQL)

    def __repr__(self) -> str:
        return f"LocalRunConfigStore({str(self.catalog.basedir)!r})"

    def list_run_configs(self) -> list[str]:
        if not self._has_table():  # a read-only (or not yet created) store that never held a run config
            return []
        return [row["name"] for row in self.catalog.query("SELECT name FROM run_configs ORDER BY name")]

    def _has_table(self) -> bool:
        return bool(self.catalog.query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'run_configs'"))

    def _insert(self, name: str, text: str) -> str | None:
        with self.catalog.transaction() as db:
            db.execute(RUNS_TABLE_SQL)
            row = db.execute("SELECT config FROM run_configs WHERE name = ?", (name,)).fetchone()
            if row is not None:
                return row["config"]
            db.execute(
                "INSERT INTO run_configs (name, config, created) VALUES (?, ?, ?)", (name, text, time.time())
            )
        return None

    def _find(self, name: str) -> str | None:
        if not self._has_table():
            return None
        rows = self.catalog.query("SELECT config FROM run_configs WHERE name = ?", (name,))
        return rows[0]["config"] if rows else None
