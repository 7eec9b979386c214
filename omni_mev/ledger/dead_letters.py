"""The ledger's dead letters: rows the database refused, set aside in a JSON-lines file instead of being lost.

A file, not a table: what one database refuses (a NUL in a PostgreSQL text
column, say) a table in the same database would refuse again. Each line says
when, which table, the database's error class and the row, with binary
columns in base64, so a person can mend the rows and load them by hand
(docs/operations.md).
"""
from __future__ import annotations

import base64
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from omni_mev import metrics
from omni_mev.jsonio import dumps

log = logging.getLogger(__name__)


def _plain(value: Any) -> Any:
    return {"base64": base64.b64encode(value).decode()} if isinstance(value, (bytes, bytearray, memoryview)) else value


class DeadLetters:
    """Appends refused rows to `path` (made with its directory when first needed), counted in the metrics."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()

    def add(self, table: str, row: dict[str, Any], error: str) -> None:
        """Set one refused row aside; never raises (the writer must go on with the rest)."""
        metrics.LEDGER_DEAD_LETTERS.labels(table=table).inc()
        line = dumps({"dead_at": time.time(), "table": table, "error": error,
                      "row": {name: _plain(value) for name, value in row.items()}}) + b"\n"
        if self.path is None:
            log.error("ledger: the database refused a %s row (%s); no dead-letter file, the row: %s",
                      table, error, line.decode().strip())
            return
        try:
            with self._lock:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "ab") as file:
                    file.write(line)
                    file.flush()
                    os.fsync(file.fileno())
        except OSError as failure:
            log.error("ledger: the database refused a %s row (%s) and %s cannot be written (%s); the row: %s",
                      table, error, self.path, failure, line.decode().strip())
            return
        log.error("ledger: the database refused a %s row (%s); set aside in %s", table, error, self.path)


def read(path: Path) -> list[dict[str, Any]]:
    """The dead letters in `path` (an empty list when there are none)."""
    if not path.is_file():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
