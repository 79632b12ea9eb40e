"""How a config field declares its constraints, and the one check that enforces them.

Every config group (the model's beside the models, each task's beside the tasks, the
trainer's and the sweep's beside theirs) is a plain dataclass whose fields say what they
accept: choices as ``Literal[...]`` annotations (OmegaConf checks and lists them on merge),
ranges and finiteness as field metadata written with :func:`knob`, cross-field rules in an
optional ``check()`` method. :func:`check` walks a config once, with the dotted path of each
field, so an error always names the key as the user would type it.

Standard library only: importing a schema never imports OmegaConf, YAML, torch or Ray.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from typing import Any, Dict, List, Optional

MAX_INT = 2**63 - 1
"""Largest integer any field accepts (torch seeds and sizes are int64)."""


class ConfigError(ValueError):
    """A config is invalid. ``key`` is the dotted key at fault (or None for the whole file)."""

    def __init__(self, key: Optional[str], message: str):
        self.key, self.message = key, message
        super().__init__(f"{key}: {message}" if key else message)

    def __reduce__(self):  # picklable across processes (Ray workers)
        return (type(self), (self.key, self.message))

    def under(self, prefix: str) -> "ConfigError":
        """The same error with its key placed under ``prefix`` (e.g. ``grid[arm].``)."""
        if not prefix:
            return self
        key = f"{prefix}{self.key}" if self.key else prefix.rstrip(".")
        return ConfigError(key, self.message)


def did_you_mean(key: str, choices: List[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or ''."""
    last = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(key, choices, n=1, cutoff=0.6)
    if not close:
        by_last = {c.rsplit(".", 1)[-1]: c for c in choices}
        hit = difflib.get_close_matches(last, list(by_last), n=1, cutoff=0.6)
        close = [by_last[hit[0]]] if hit else []
    return f" (did you mean '{close[0]}'?)" if close else ""


def knob(default: Any = dataclasses.MISSING, *, ge: Optional[float] = None, gt: Optional[float] = None,
         le: Optional[float] = None, lt: Optional[float] = None, max_value: Optional[float] = None,
         semantic: bool = True, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with declared bounds.

    Args:
        ge, gt, le, lt: inclusive / exclusive bounds checked by :func:`check`.
        max_value: a sanity cap (e.g. a model width) beyond which a value is refused.
        semantic: False for fields that do not change what a trial computes (device,
            threads, logging): they are left out of the trial key.
    """
    meta = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt), ("max", max_value)) if v is not None}
    meta["semantic"] = semantic
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def choices_of(cls: type, name: str) -> tuple:
    """The ``Literal[...]`` choices of field ``name`` of dataclass ``cls`` (``()`` if none)."""
    hint = typing.get_type_hints(cls).get(name)
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Union:  # Optional[Literal[...]]
        hint = next((a for a in args if a is not type(None)), None)
        args = typing.get_args(hint)
    return tuple(args) if typing.get_origin(hint) is typing.Literal else ()


def _check_number(key: str, value: Any, meta: Dict[str, Any]) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(key, f"must be a finite number, got {value}")
    if isinstance(value, int) and abs(value) > MAX_INT:
        raise ConfigError(key, f"{value} is out of range (at most {MAX_INT})")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(key, f"{value} is larger than the largest accepted value {meta['max']:g}")
    lo = (">=", meta["ge"]) if "ge" in meta else (">", meta["gt"]) if "gt" in meta else None
    hi = ("<=", meta["le"]) if "le" in meta else ("<", meta["lt"]) if "lt" in meta else None
    bad_lo = lo is not None and (value < lo[1] if lo[0] == ">=" else value <= lo[1])
    bad_hi = hi is not None and (value > hi[1] if hi[0] == "<=" else value >= hi[1])
    if bad_lo or bad_hi:
        if lo and hi:
            left = "[" if lo[0] == ">=" else "("
            right = "]" if hi[0] == "<=" else ")"
            raise ConfigError(key, f"must be in {left}{lo[1]:g}, {hi[1]:g}{right}, got {value}")
        op, bound = lo if bad_lo else hi  # type: ignore[misc]
        raise ConfigError(key, f"must be {op} {bound:g}, got {value}")


def check(cfg: Any, prefix: str = "") -> None:
    """Check every field of dataclass ``cfg`` (recursively) against its declared constraints.

    Numbers must be finite and within their bounds, ``Literal`` fields one of their choices,
    and each dataclass's own ``check()`` (cross-field rules, raising ConfigError with keys
    relative to it) passes. Errors name the dotted key, under ``prefix``.
    """
    for f in dataclasses.fields(cfg):
        key = f"{prefix}{f.name}"
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            check(value, f"{key}.")
            continue
        choices = choices_of(type(cfg), f.name)
        if choices and value is not None and value not in choices:
            raise ConfigError(key, f"{value!r} is not one of {', '.join(map(str, choices))}"
                              + did_you_mean(str(value), [str(c) for c in choices]))
        if isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                _check_number(f"{key}[{i}]", item, f.metadata)
        else:
            _check_number(key, value, f.metadata)
    own = getattr(cfg, "check", None)
    if callable(own):
        try:
            own()
        except ConfigError as e:
            raise e.under(prefix) from None


def nonsemantic_keys(cls: type, prefix: str = "") -> List[str]:
    """Dotted keys of fields declared ``semantic=False`` (left out of trial keys)."""
    out: List[str] = []
    for f in dataclasses.fields(cls):
        sub = _dataclass_type(cls, f)
        if sub is not None:
            out += nonsemantic_keys(sub, f"{prefix}{f.name}.")
        elif not f.metadata.get("semantic", True):
            out.append(f"{prefix}{f.name}")
    return out


def leaf_keys(cls: type, prefix: str = "") -> List[str]:
    """All dotted leaf keys of a dataclass schema."""
    out: List[str] = []
    for f in dataclasses.fields(cls):
        sub = _dataclass_type(cls, f)
        out += leaf_keys(sub, f"{prefix}{f.name}.") if sub is not None else [f"{prefix}{f.name}"]
    return out


def semantic_dict(cfg: Any) -> Any:
    """A config as nested dicts, without its non-semantic fields (what a trial key hashes)."""
    if not dataclasses.is_dataclass(cfg):
        return cfg
    return {f.name: semantic_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)
            if f.metadata.get("semantic", True)}


def _dataclass_type(cls: type, f: dataclasses.Field) -> Optional[type]:
    hint = typing.get_type_hints(cls).get(f.name)
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


def field_docs(cls: type, prefix: str = "") -> Dict[str, str]:
    """Dotted key -> the docstring written under each field (recursively), for ``--help``."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: Dict[str, str] = {}
    for a, b in zip(body, body[1:]):
        if (isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr)
                and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str)):
            docs[a.target.id] = " ".join(b.value.value.split())
    out: Dict[str, str] = {}
    for f in dataclasses.fields(cls):
        sub = _dataclass_type(cls, f)
        if sub is not None:
            out.update(field_docs(sub, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = docs.get(f.name, "")
    return out
