"""What a worker serves when the model registry is on: the champion's files and the challenger as the shadow.

Configuration only names the registry (AI_MODEL_REGISTRY); the application
factory and gunicorn's start-up check resolve its aliases here.
"""
from __future__ import annotations

from dataclasses import replace

import sqlalchemy as sa

from omni_mev.config import Settings
from omni_mev.errors import ConfigError
from omni_mev.registry.store import Registry, RegistryError


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
    except (RegistryError, sa.exc.SQLAlchemyError) as error:
        raise ConfigError(f"AI_MODEL_REGISTRY={root}: {_first_line(error)}") from None
    if champion is None:
        raise ConfigError(f"AI_MODEL_REGISTRY={root} has no champion; allowed: a registry with one "
                          f"(omni-mev models register DIR --as champion)")
    return replace(settings, model_path=champion.onnx, shadow_model_path=challenger.onnx if challenger else None)


def _first_line(error: Exception) -> str:
    """A registry error as it is, a database's as its first line (SQLAlchemy appends the statement and a link)."""
    if isinstance(error, sa.exc.SQLAlchemyError):
        return f"AI_MODEL_REGISTRY_DB unreachable ({str(error.orig or error).splitlines()[0]})"
    return str(error)
