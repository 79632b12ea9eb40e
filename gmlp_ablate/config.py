"""Reading configs: YAML files, ``key=value`` overrides, and merging them into a schema.

The one module that parses YAML (safe loader only: no tags that construct objects, duplicate
keys refused, alias expansion capped) and command-line overrides (typed by OmegaConf's
grammar, so ``1e-3`` and ``1.0e-3`` are the same float). Merging into a structured config
(the dataclass schemas beside their owners) rejects unknown keys and wrong types; every
error is a :class:`~gmlp_ablate.schema.ConfigError` naming the dotted key.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple, Type, TypeVar

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gmlp_ablate.schema import ConfigError, did_you_mean, leaf_keys

MAX_FILE_BYTES = 1 << 20
"""Largest config file read (a sweep file is a few KB)."""
MAX_NODES = 100_000
"""Largest number of YAML nodes a file may expand to once its aliases are followed."""

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_T = TypeVar("_T")


# --------------------------------------------------------------------------------------
# YAML
# --------------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """The safe loader, refusing a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Dict[Any, Any]:
        seen: Dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first given on line {seen[key].line + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: yaml.Node, memo: Dict[int, int]) -> int:
    """Number of nodes once aliases are expanded (memoised, so a bomb is counted, not built)."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = 1  # a recursive alias counts once
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(n, memo) for n in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    else:
        size = 1
    memo[id(node)] = size
    return size


def load_yaml(path: Any) -> Dict[str, Any]:
    """A YAML file's top-level mapping; ConfigError naming the file (and line) otherwise."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(None, f"{p}: no such file")
    if p.is_dir():
        raise ConfigError(None, f"{p}: is a directory, expected a YAML file")
    try:
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ConfigError(None, f"{p}: {size} bytes is too large for a config file (at most {MAX_FILE_BYTES})")
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(None, f"{p}: cannot be read ({e.strerror or e})") from None
    if b"\x00" in raw:
        raise ConfigError(None, f"{p}: is a binary file, expected YAML text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(None, f"{p}: is not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r})") from None
    try:
        loader = _StrictLoader(text)
        try:
            node = loader.get_single_node()
            if node is not None and _expanded_size(node, {}) > MAX_NODES:
                raise ConfigError(None, f"{p}: expands to more than {MAX_NODES} YAML nodes (aliases); "
                                  "write the values out or split the file")
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(None, f"{p}: malformed YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(None, f"{p}: expected a mapping at the top level, got {type(data).__name__}")
    return data


# --------------------------------------------------------------------------------------
# Overrides
# --------------------------------------------------------------------------------------


def parse_overrides(items: Iterable[str]) -> List[Tuple[str, Any]]:
    """``["model.dim=64", "grid.model.init_eps=[0,1e-3]"]`` -> typed ``[(key, value), ...]``.

    Values follow OmegaConf's grammar (as YAML 1.2: ``1e-3`` is a float, ``true`` a bool,
    ``null`` None, ``[a,b]`` a list); a malformed item raises ConfigError naming it.
    """
    out = []
    for item in items:
        if "=" not in item:
            raise ConfigError(item, "expected KEY=VALUE")
        key, text = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(item, "empty key")
        if not _KEY.match(key):
            raise ConfigError(key, "malformed key: expected dotted names such as model.dim")
        try:
            value = OmegaConf.to_container(OmegaConf.from_dotlist([f"v={text}"]), resolve=True)["v"]  # type: ignore[index]
        except OmegaConfBaseException as e:
            raise ConfigError(key, f"cannot parse value {text!r}: {str(e).splitlines()[0]}") from None
        out.append((key, value))
    return out


def nest(key: str, value: Any) -> Dict[str, Any]:
    """``("a.b.c", 1)`` -> ``{"a": {"b": {"c": 1}}}``."""
    out: Dict[str, Any] = {}
    cur = out
    parts = key.split(".")
    for part in parts[:-1]:
        cur = cur.setdefault(part, {})
    cur[parts[-1]] = value
    return out


def deep_merge(a: Dict[str, Any], b: Dict[str, Any]) -> Dict[str, Any]:
    """``b`` over ``a``, recursively for nested mappings (new dicts; leaves shared)."""
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# --------------------------------------------------------------------------------------
# Merging into a schema
# --------------------------------------------------------------------------------------


def _groups(schema: type) -> Dict[str, type]:
    import typing

    hints = typing.get_type_hints(schema)
    return {f.name: hints[f.name] for f in dataclasses.fields(schema)
            if isinstance(hints.get(f.name), type) and dataclasses.is_dataclass(hints[f.name])}


def check_keys(data: Any, schema: type, prefix: str = "") -> None:
    """Refuse keys not in ``schema`` (with a did-you-mean) and groups given as non-mappings."""
    if not isinstance(data, dict):
        raise ConfigError(prefix.rstrip(".") or None, f"expected a mapping, got {data!r}")
    names = [f.name for f in dataclasses.fields(schema)]
    groups = _groups(schema)
    for k, v in data.items():
        full = f"{prefix}{k}"
        if k not in names:
            all_keys = [f"{prefix}{key}" for key in leaf_keys(schema)] + [f"{prefix}{g}" for g in groups]
            raise ConfigError(full, "unknown key" + did_you_mean(full, all_keys))
        if k in groups:
            if v is None:
                continue
            if not isinstance(v, dict):
                raise ConfigError(full, f"expected a mapping of {full}.* keys, got {v!r}")
            check_keys(v, groups[k], f"{full}.")


def merge_structured(schema: Type[_T], parts: Iterable[Any], prefix: str = "") -> _T:
    """Merge partial configs (nested dicts) over ``schema``'s defaults; types are checked
    and converted (``1`` -> ``1.0`` for a float), values are not (see ``schema.check``)."""
    cfg = OmegaConf.structured(schema)
    for part in parts:
        if part is None:
            continue
        data = OmegaConf.to_container(part) if isinstance(part, DictConfig) else part
        check_keys(data, schema, prefix)
        try:
            cfg = OmegaConf.merge(cfg, data)
        except OmegaConfBaseException as e:
            raise _omegaconf_error(e, prefix) from None
    try:
        return OmegaConf.to_object(cfg)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        raise _omegaconf_error(e, prefix) from None


def _omegaconf_error(e: OmegaConfBaseException, prefix: str) -> ConfigError:
    """An OmegaConf merge error as a ConfigError naming the key."""
    key = getattr(e, "full_key", None) or ""
    key = f"{prefix}{key}" if key else (prefix.rstrip(".") or None)
    msg = str(e).splitlines()[0]
    if "Value '" in msg or "Invalid type" in msg or "could not be converted" in msg or "Incompatible value" in msg:
        return ConfigError(key, f"wrong type: {msg}")
    return ConfigError(key, msg)


def schema_default(schema: type, key: str) -> Optional[Any]:
    """The default value of dotted ``key`` in ``schema`` (for ``--help``)."""
    obj: Any = schema()
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj
