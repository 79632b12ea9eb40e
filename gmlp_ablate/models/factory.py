"""Building models: ``build_model`` (a config) and ``build_preset`` (a named preset).

Importing this module imports every architecture's module, so each has registered its class
(``registry.ARCHS``).
"""

from __future__ import annotations

from typing import Any

from gmlp_ablate.models import gmlp, transformer  # noqa: F401  (register the architectures)
from gmlp_ablate.models.config import ModelConfig, TaskShape
from gmlp_ablate.models.layers import ZooModel
from gmlp_ablate.models.registry import ARCHS, preset_config
from gmlp_ablate.schema import check


def build_model(model_cfg: ModelConfig, shape: TaskShape) -> ZooModel:
    """The model named by ``model_cfg.arch`` for a task of ``shape`` (validated first;
    a bad value raises ``ConfigError`` naming the ``model.*`` key)."""
    check(model_cfg, "model.")
    return ARCHS[model_cfg.arch](model_cfg, shape)


def build_preset(name: str, shape: TaskShape, **overrides: Any) -> ZooModel:
    """The model of preset ``name`` (``registry.PRESETS``) with ``overrides`` applied, for a
    task of ``shape``."""
    return build_model(preset_config(name, **overrides), shape)
