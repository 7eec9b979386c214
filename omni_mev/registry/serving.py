"""What a worker serves when the model registry is on: the champion's files and the challenger as the shadow.

Configuration only names the registry (AI_MODEL_REGISTRY); the application
factory and gunicorn's start-up check resolve its aliases here.

With the aliases in a shared database (AI_MODEL_REGISTRY_DB), each host
keeps the last aliases it resolved (in AI_LAST_GOOD_DIR): a worker that
starts while the database is unreachable (a reload, a recycled worker)
serves those, with a warning, instead of failing to boot and taking the host
down with the database.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import replace

import sqlalchemy as sa

from omni_mev.config import Settings
from omni_mev.errors import ConfigError
from omni_mev.registry.store import ModelVersion, Registry, RegistryError

log = logging.getLogger(__name__)
# In AI_LAST_GOOD_DIR: the versions this host last resolved from a shared registry database.
LAST_RESOLVED_FILE = "registry-aliases.json"


def with_registry_models(settings: Settings) -> Settings:
    """The settings with the registry's champion as the served model and its challenger as the shadow, each alias
    resolved once; unchanged without a registry.

    A worker reads the ONNX model, its .pt and its card from one version
    directory, so a promotion between two reads cannot mix versions.
    """
    root = settings.model_registry
    if root is None:
        return settings
    try:
        registry = Registry.of(settings)
        champion, challenger = registry.resolve("champion"), registry.resolve("challenger")
        _remember(settings, champion, challenger)
    except sa.exc.SQLAlchemyError as error:
        champion, challenger = _last_resolved(settings, Registry(root), error)
    except RegistryError as error:
        raise ConfigError(f"AI_MODEL_REGISTRY={root}: {error}") from None
    if champion is None:
        raise ConfigError(f"AI_MODEL_REGISTRY={root} has no champion; allowed: a registry with one "
                          f"(omni-mev models register DIR --as champion)")
    return replace(settings, model_path=champion.onnx, shadow_model_path=challenger.onnx if challenger else None)


def _remember(settings: Settings, champion: ModelVersion | None, challenger: ModelVersion | None) -> None:
    """Keep what a shared database said, for a worker that starts while it cannot be reached."""
    if settings.model_registry_db is None or settings.last_good_dir is None or champion is None:
        return
    target = settings.last_good_dir / LAST_RESOLVED_FILE
    aliases = {"champion": champion.version, "challenger": challenger.version if challenger else None}
    try:
        settings.last_good_dir.mkdir(parents=True, exist_ok=True)
        scratch = target.with_name(f".{target.name}.{os.getpid()}")
        scratch.write_text(json.dumps(aliases))
        os.replace(scratch, target)
    except OSError as error:
        log.warning("cannot keep the resolved aliases in %s: %s", target, error)


def _last_resolved(settings: Settings, files: Registry,
                   error: sa.exc.SQLAlchemyError) -> tuple[ModelVersion | None, ModelVersion | None]:
    """The versions this host resolved last, when the registry's database cannot be reached; ConfigError when it
    never resolved any."""
    reason = f"AI_MODEL_REGISTRY_DB unreachable ({str(getattr(error, 'orig', None) or error).splitlines()[0]})"
    path = settings.last_good_dir / LAST_RESOLVED_FILE if settings.last_good_dir else None
    try:
        aliases = json.loads(path.read_text()) if path else None
        champion = files.get(aliases["champion"]) if aliases else None
        challenger = files.get(aliases["challenger"]) if aliases and aliases.get("challenger") else None
    except (OSError, ValueError, KeyError, RegistryError):
        champion = None
    if champion is None:
        raise ConfigError(f"AI_MODEL_REGISTRY={settings.model_registry}: {reason}, and this host has not resolved "
                          f"its aliases before") from None
    log.warning("%s: serving %s, the champion this host resolved last", reason, champion.version)
    return champion, challenger
