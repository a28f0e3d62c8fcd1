"""YAML as faeval-tui reads it: safe, and bounded, since a preset is any file a user points at.

UTF-8 only, at most ``MAX_PRESET_BYTES``, nested at most ``MAX_YAML_DEPTH`` levels, and at
most ``MAX_YAML_NODES`` values once aliases are expanded (a preset is ~50 values; a
billion-laughs file of 700 bytes expands to 9⁹). Anchors and aliases stay allowed within
that size (``penalty_methods: *m``): counting the expansion, not banning aliases, refuses
the bombs as fast and keeps ordinary YAML working. Numbers YAML cannot construct (a
5000-digit int, a date like 2024-13-45) are refused with their line, never raised as a
traceback.
"""
from __future__ import annotations

import re
from importlib.abc import Traversable
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

MAX_PRESET_BYTES = 1 << 20  # a preset is ~1 KB
MAX_YAML_DEPTH = 64  # levels of nesting; a preset uses 3 (mapping, section, list)
MAX_YAML_NODES = 100_000  # values in a document with its aliases expanded


class YAMLLimitError(yaml.MarkedYAMLError):
    """A document beyond the loader's limits (depth, alias expansion), or a value YAML
    cannot construct; ``problem`` says which and ``problem_mark`` where."""


class _Loader(yaml.SafeLoader):
    """The safe loader, reading ``1e-3`` as a float as YAML 1.2 does (1.1 needs ``1.0e-3``),
    with the limits above checked while composing: before any object is built."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0
        self._sizes: dict[int, int] = {}  # id(node) → values under it, aliases expanded

    def compose_document(self) -> Any:
        self._depth, self._sizes = 0, {}
        try:
            return super().compose_document()
        finally:
            self._sizes = {}

    def compose_node(self, parent: Any, index: Any) -> Any:
        mark = self.peek_event().start_mark
        alias = self.check_event(yaml.AliasEvent)
        if self._depth >= MAX_YAML_DEPTH:
            raise YAMLLimitError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels", mark)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        size = self._sizes.get(id(node))
        if size is None:
            if alias:  # its anchor's node is still being composed: the alias is inside it
                raise YAMLLimitError(None, None, "an alias refers to a node that contains it", mark)
            if isinstance(node, yaml.SequenceNode):
                size = 1 + sum(self._sizes[id(child)] for child in node.value)
            elif isinstance(node, yaml.MappingNode):
                size = 1 + sum(self._sizes[id(k)] + self._sizes[id(v)] for k, v in node.value)
            else:
                size = 1
            self._sizes[id(node)] = size
        if size > MAX_YAML_NODES:
            raise YAMLLimitError(None, None, f"holds {size:,} values with its aliases expanded, more than "
                                 f"the {MAX_YAML_NODES:,} allowed", mark)
        return node

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as err:  # int() past 4300 digits, a date with month 13, …
            problem = str(err).split(";")[0][:120]
            value = node.value if isinstance(node, yaml.ScalarNode) else node.tag
            raise YAMLLimitError(None, None, f"cannot read the value {value!s:.40}: {problem}",
                                 node.start_mark) from None


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."))


def safe_load(text: str) -> Any:
    """YAML through ``_Loader``: every failure is a ``yaml.YAMLError`` (the limits are
    ``YAMLLimitError``), never a RecursionError or ValueError."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader subclass
    except RecursionError:  # a backstop: the depth limit stops nesting long before Python's stack
        raise YAMLLimitError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels", None) from None


def where(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""


def limit_hint(err: YAMLLimitError) -> str:
    if "alias" in (err.problem or ""):
        return "write the values out: a preset needs no anchors or aliases beyond a small reuse"
    if "nested" in (err.problem or ""):
        return "nothing in a preset nests deeper than a section holding a list: write `key: value` lines"
    return "write the value as a plain number or a quoted string"


def read_yaml(path: Path | Traversable) -> dict[str, Any]:
    try:
        if isinstance(path, Path) and path.stat().st_size > MAX_PRESET_BYTES:
            raise ConfigError(f"preset {path} is {path.stat().st_size / (1 << 20):,.1f} MiB, larger than the "
                              f"{MAX_PRESET_BYTES >> 20} MiB a preset may be",
                              "give the preset's YAML file (a preset is a few dozen `key: value` lines)")
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read preset {path}: {err.strerror or err}", "check the path") from None
    if len(raw) > MAX_PRESET_BYTES:  # a Traversable, or a file that grew since its stat
        raise ConfigError(f"preset {path} is larger than the {MAX_PRESET_BYTES >> 20} MiB a preset may be",
                          "give the preset's YAML file (a preset is a few dozen `key: value` lines)")
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark, as some editors write, is not content
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise ConfigError(f"preset {path} is not UTF-8 text: byte {raw[err.start:err.start + 1]!r} at line {line} "
                          f"(offset {err.start})",
                          "save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)") from None
    try:
        data = safe_load(text)  # safe loader only: a preset never constructs objects
    except YAMLLimitError as err:
        raise ConfigError(f"preset {path} is refused{where(err)}: {err.problem}", limit_hint(err)) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"preset {path} is not valid YAML{where(err)}: {getattr(err, 'problem', err)}",
                          "fix the YAML syntax (indentation, ':' after each key)") from None
    return {} if data is None else data
