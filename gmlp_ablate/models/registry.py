"""Which class builds each architecture, and the named presets (the paper's sizes).

Torch-free: an architecture's module registers its class with ``@register_arch(name)`` when
it is imported (``gmlp_ablate.models.factory`` imports them all); presets are plain
``ModelConfig`` overrides, usable without building anything.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, TypeVar

from gmlp_ablate.models.config import ModelConfig
from gmlp_ablate.schema import ConfigError, did_you_mean

T = TypeVar("T")

ARCHS: Dict[str, Any] = {}
"""Architecture name (``ModelConfig.arch``) -> the model class, built as ``cls(cfg, shape)``."""


def register_arch(name: str) -> Callable[[T], T]:
    """Class decorator: build ``ModelConfig(arch=name)`` with the decorated class."""

    def register(cls: T) -> T:
        if name in ARCHS and ARCHS[name] is not cls:
            raise ValueError(f"architecture {name!r} is already registered to {ARCHS[name].__name__}")
        ARCHS[name] = cls
        return cls

    return register


PRESETS: Dict[str, Dict[str, Any]] = {
    # Vision (the paper's Table 1; timm's gmlp_ti16 / s16 / b16): 30 blocks, d_ffn = 6 d.
    "gmlp_ti": dict(arch="gmlp", depth=30, dim=128, ff_mult=6),
    "gmlp_s": dict(arch="gmlp", depth=30, dim=256, ff_mult=6),
    "gmlp_b": dict(arch="gmlp", depth=30, dim=512, ff_mult=6),
    # Masked language modelling (the paper's BERT-setting models, sec. 4): d_ffn = 3072.
    "gmlp_base": dict(arch="gmlp", depth=48, dim=512, ff_mult=6),
    "gmlp_large": dict(arch="gmlp", depth=96, dim=768, ff_mult=4),
    "amlp_base": dict(arch="gmlp", depth=36, dim=512, ff_mult=6, attn_dim=64),
    "amlp_large": dict(arch="gmlp", depth=72, dim=768, ff_mult=4, attn_dim=64),
    # Ablation at the base size: the unsplit ("multiplicative") SGU of the paper's Table 3.
    "gmlp_base_unsplit": dict(arch="gmlp", depth=48, dim=512, ff_mult=6, sgu_split=False),
    # The attention baselines the paper compares against (BERT base / large), with the
    # learned absolute or relative positions of its Table 3.
    "transformer_base": dict(arch="transformer", depth=12, dim=768, ff_mult=4, heads=12),
    "transformer_base_relative": dict(arch="transformer", depth=12, dim=768, ff_mult=4, heads=12, pos="relative"),
    "transformer_large": dict(arch="transformer", depth=24, dim=1024, ff_mult=4, heads=16),
}
"""Preset name -> ``ModelConfig`` overrides (fields not named keep their defaults)."""


def preset_config(name: str, **overrides: Any) -> ModelConfig:
    """The ``ModelConfig`` of preset ``name``, with ``overrides`` applied on top."""
    if name not in PRESETS:
        raise ConfigError("preset", f"unknown preset {name!r}" + did_you_mean(name, sorted(PRESETS)))
    cfg = ModelConfig(**PRESETS[name])
    return dataclasses.replace(cfg, **overrides) if overrides else cfg
