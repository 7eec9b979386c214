"""The model registry: versions addressed by hash, `champion` and `challenger` aliases, and their history.

    registry/
      versions/<version>/lstm_omni.onnx, lstm_omni.pt (when it has one), lstm_omni.json (its card)
      champion   -> versions/<version>     the served model
      challenger -> versions/<version>     scored beside it as the shadow model
      history.jsonl                        every change, who made it and why
      .lock                                held while a change is made

An alias is a relative symlink to a whole version directory, replaced with
rename(2): a reader sees the old version or the new one, never the ONNX file
of one and the card of the other. The service resolves the alias once per
worker (omni_mev.registry.serving) and reads every file from that directory.

For a fleet, the aliases and the history live in a PostgreSQL database every
host shares (AI_MODEL_REGISTRY_DB, DatabaseCatalog), and the version
directories on storage every host mounts (AI_MODEL_REGISTRY): a promotion
on any host is one committed row, which every host's watcher sees.

The registry knows nothing of HTTP, gunicorn or the ledger: the CLI, the
retraining job and the master's AliasWatcher (watcher.py) use it.
"""
from __future__ import annotations

import datetime as dt
import fcntl
import getpass
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from omni_mev.config import Settings
from omni_mev.runtime.base import MODEL_NAME, version_of

log = logging.getLogger(__name__)

ONNX_FILE = f"{MODEL_NAME}.onnx"
WEIGHTS_FILE = f"{MODEL_NAME}.pt"
CARD_FILE = f"{MODEL_NAME}.json"
ALIASES = ("champion", "challenger")
# The history events that change the champion (a rollback undoes the last of them).
CHAMPION_CHANGES = ("promote", "set_champion")
HISTORY_FILE = "history.jsonl"


class RegistryError(Exception):
    """A registry operation that cannot be done; the message says why and what to do."""


@dataclass(frozen=True)
class ModelVersion:
    """One registered model."""

    version: str  # the first 12 hex digits of the ONNX file's sha256, as the service reports it
    path: Path  # its directory
    card: dict[str, Any]

    @property
    def onnx(self) -> Path:
        return self.path / ONNX_FILE


def current_user() -> str:
    """Who is making a change: the invoking user behind sudo, else the login name."""
    return os.environ.get("SUDO_USER") or getpass.getuser()


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class DirectoryCatalog:
    """Aliases as symlinks in the registry directory, the history as a JSON-lines file, changes under a flock:
    one host."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def alias(self, name: str) -> str | None:
        try:
            return Path(os.readlink(self.root / name)).name
        except (FileNotFoundError, OSError):
            return None

    def set_alias(self, name: str, version: str | None) -> None:
        """Point an alias at a version (or remove it) atomically; the caller holds the lock."""
        link = self.root / name
        if version is None:
            link.unlink(missing_ok=True)
            return
        scratch = self.root / f".{name}.{os.getpid()}"
        scratch.unlink(missing_ok=True)
        os.symlink(Path("versions") / version, scratch)
        os.replace(scratch, link)

    def history(self) -> list[dict[str, Any]]:
        try:
            lines = (self.root / HISTORY_FILE).read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def append(self, event: dict[str, Any]) -> None:
        with open(self.root / HISTORY_FILE, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(event, sort_keys=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    @contextmanager
    def locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


_catalog_tables = sa.MetaData()
ALIAS_TABLE = sa.Table(
    "registry_aliases", _catalog_tables,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("version", sa.String(64), nullable=True),
)
HISTORY_TABLE = sa.Table(
    "registry_history", _catalog_tables,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
    sa.Column("event", sa.Text, nullable=False),
)
# Changes to the catalog, one at a time across hosts: a transaction-level advisory lock on this key.
CHANGE_LOCK_KEY = int.from_bytes(hashlib.sha256(b"omni-mev registry change").digest()[:8], "big", signed=True)


class DatabaseCatalog:
    """Aliases and history in a PostgreSQL database every host shares; a change holds an advisory lock for its
    transaction, so a promotion's alias and history row commit together or not at all."""

    def __init__(self, url: str) -> None:
        if sa.engine.make_url(url).get_backend_name() != "postgresql":
            raise RegistryError(f"AI_MODEL_REGISTRY_DB must be a PostgreSQL URL, not {url!r}")
        self.engine = sa.create_engine(url, pool_pre_ping=True, pool_size=1, max_overflow=2)
        self._change: sa.Connection | None = None
        self._tables_ready = False

    @contextmanager
    def _connection(self) -> Iterator[sa.Connection]:
        """The change's connection inside locked(); a short read-only one otherwise."""
        if self._change is not None:
            yield self._change
            return
        self._ensure_tables()
        with self.engine.connect() as connection:
            yield connection

    def _ensure_tables(self) -> None:
        if not self._tables_ready:
            _catalog_tables.create_all(self.engine, checkfirst=True)
            self._tables_ready = True

    def alias(self, name: str) -> str | None:
        with self._connection() as connection:
            return connection.execute(sa.select(ALIAS_TABLE.c.version).where(ALIAS_TABLE.c.name == name)).scalar()

    def set_alias(self, name: str, version: str | None) -> None:
        with self._connection() as connection:
            connection.execute(sa.delete(ALIAS_TABLE).where(ALIAS_TABLE.c.name == name))
            if version is not None:
                connection.execute(sa.insert(ALIAS_TABLE).values(name=name, version=version))
            if self._change is None:
                connection.commit()

    def history(self) -> list[dict[str, Any]]:
        with self._connection() as connection:
            rows = connection.execute(sa.select(HISTORY_TABLE.c.event).order_by(HISTORY_TABLE.c.id)).scalars()
            return [json.loads(row) for row in rows]

    def append(self, event: dict[str, Any]) -> None:
        with self._connection() as connection:
            connection.execute(sa.insert(HISTORY_TABLE).values(event=json.dumps(event, sort_keys=False)))
            if self._change is None:
                connection.commit()

    @contextmanager
    def locked(self) -> Iterator[None]:
        self._ensure_tables()
        with self.engine.begin() as connection:
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": CHANGE_LOCK_KEY})
            self._change = connection
            try:
                yield
            finally:
                self._change = None


Catalog = DirectoryCatalog | DatabaseCatalog


class Registry:
    """Model versions in a directory, with aliases and history in the directory or in a shared database."""

    def __init__(self, root: Path, database_url: str | None = None) -> None:
        self.root = root
        self.versions_dir = root / "versions"
        self.catalog: Catalog = DatabaseCatalog(database_url) if database_url else DirectoryCatalog(root)

    @classmethod
    def of(cls, settings: Settings) -> Registry:
        """The registry the settings name (AI_MODEL_REGISTRY, with AI_MODEL_REGISTRY_DB where set)."""
        if settings.model_registry is None:
            raise RegistryError("no registry: set AI_MODEL_REGISTRY")
        return cls(settings.model_registry, settings.model_registry_db)

    # Reading

    def exists(self) -> bool:
        return self.versions_dir.is_dir()

    def alias(self, name: str) -> str | None:
        """The version an alias points to, or None."""
        return self.catalog.alias(name)

    def aliases(self) -> dict[str, str | None]:
        return {name: self.alias(name) for name in ALIASES}

    def get(self, version: str) -> ModelVersion:
        path = self.versions_dir / version
        if not (path / ONNX_FILE).is_file():
            raise RegistryError(f"no version {version!r} in {self.root} (omni-mev models lists them)")
        try:
            card = json.loads((path / CARD_FILE).read_text())
        except (OSError, ValueError):
            card = {}
        return ModelVersion(version, path, card)

    def resolve(self, name: str) -> ModelVersion | None:
        """The version an alias points to, read through one resolution of the link."""
        version = self.alias(name)
        return self.get(version) if version else None

    def versions(self) -> list[ModelVersion]:
        """Every registered version, oldest first."""
        if not self.exists():
            return []
        found = [self.get(p.name) for p in self.versions_dir.iterdir() if (p / ONNX_FILE).is_file()]
        return sorted(found, key=lambda v: (v.path.stat().st_mtime, v.version))

    def history(self) -> list[dict[str, Any]]:
        """Every recorded change, oldest first."""
        return self.catalog.history()

    def previous_champions(self) -> list[str]:
        """The champions a rollback returns to, the most recent last (replayed from the history): every change of
        champion counts, a promotion or an alias set directly (`models register --as champion`)."""
        stack: list[str] = []
        for event in self.history():
            changed = event.get("event") in CHAMPION_CHANGES and event.get("from") != event.get("version")
            if changed and event.get("from"):
                stack.append(event["from"])
            elif event.get("event") == "rollback" and stack:
                stack.pop()
        return stack

    # Changing

    @contextmanager
    def locked(self) -> Iterator[None]:
        """One change at a time, across processes (a person and the retraining timer) and, with a shared
        database, across hosts."""
        with self.catalog.locked():
            yield

    def register(self, model_dir: Path, *, user: str | None = None, note: str = "") -> ModelVersion:
        """Copy a trained model (its .onnx, .pt where present, and card) in; registering twice is harmless."""
        source = model_dir / ONNX_FILE
        if not source.is_file():
            raise RegistryError(f"{model_dir} has no {ONNX_FILE} (omni-mev train --output writes one)")
        version = version_of(source.read_bytes())
        with self.locked():
            target = self.versions_dir / version
            if not target.is_dir():
                self.versions_dir.mkdir(parents=True, exist_ok=True)
                scratch = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=self.versions_dir))
                for name in (ONNX_FILE, WEIGHTS_FILE, CARD_FILE):
                    if (model_dir / name).is_file():
                        shutil.copy2(model_dir / name, scratch / name)
                scratch.chmod(0o755)
                os.replace(scratch, target)
                self._record({"event": "register", "version": version, "user": user or current_user(),
                              "note": note, "source": str(model_dir)})
        return self.get(version)

    def set_alias(self, name: str, version: str | None) -> None:
        """Point an alias at a version (or remove it) atomically; the caller holds the lock."""
        if version is not None:
            self.get(version)
        self.catalog.set_alias(name, version)

    def promote(self, *, forced: bool, user: str | None = None, comparison: dict[str, Any] | None = None) -> str:
        """The challenger becomes the champion; the old champion is kept for rollback."""
        with self.locked():
            challenger, champion = self.alias("challenger"), self.alias("champion")
            if challenger is None:
                raise RegistryError("there is no challenger to promote (omni-mev retrain or "
                                    "omni-mev models register DIR --as challenger)")
            self.set_alias("champion", challenger)
            self.set_alias("challenger", None)
            self._record({"event": "promote", "version": challenger, "from": champion, "forced": forced,
                          "user": user or current_user(), "comparison": comparison})
        return challenger

    def rollback(self, *, user: str | None = None) -> tuple[str | None, str]:
        """The champion before the last change of champion serves again; returns (from, to)."""
        with self.locked():
            previous = self.previous_champions()
            current = self.alias("champion")
            if not previous:
                raise RegistryError("no earlier champion to roll back to")
            self.set_alias("champion", previous[-1])
            self._record({"event": "rollback", "version": previous[-1], "from": current,
                          "user": user or current_user()})
        return current, previous[-1]

    def assign(self, name: str, version: str | None, *, user: str | None = None, note: str = "",
               if_unset: bool = False) -> bool:
        """Set an alias directly (registering a first champion, naming or clearing a challenger); with `if_unset`,
        only where it points nowhere yet (a deployment's first start, run by every pod). Whether it was set."""
        if name not in ALIASES:
            raise RegistryError(f"unknown alias {name!r}; aliases: {', '.join(ALIASES)}")
        with self.locked():
            before = self.alias(name)
            if if_unset and before is not None:
                return False
            self.set_alias(name, version)
            self._record({"event": f"set_{name}", "version": version, "from": before,
                          "user": user or current_user(), "note": note})
        return True

    def record(self, event: dict[str, Any]) -> None:
        """Append an event that changes no alias (a retraining run, a refused promotion)."""
        with self.locked():
            self._record(event)

    def _record(self, event: dict[str, Any]) -> None:
        self.catalog.append({"at": now_iso(), **event})
