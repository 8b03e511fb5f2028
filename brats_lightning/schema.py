"""The base of every schema: strict pydantic models, bounded JSON reading, one-line validation errors.

What brats_lightning reads back from disk (a checkpoint's stored settings, an exported model's sidecar, a
results folder's config, a split file, the cache's ``meta.json``) and the options a user gives are data,
validated, never code. Each schema lives beside the code that reads it (the data module's options in
:mod:`brats_lightning.data.options`, a clean-up in :mod:`brats_lightning.inference.cleanup`, ...) and is built
on what this module gives: :class:`Strict` models (types, ranges, no unknown keys), :func:`validate` (the first
problem in one line naming the file or option), :func:`read_json` (size and nesting bounded before parsing)
and :func:`check_no_targets` (a file may not name a callable). Nothing read from disk is imported, called or
given to ``hydra.utils.instantiate``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from brats_lightning.errors import CheckpointError, ConfigError, UserError

__all__ = [
    "Int",
    "Name",
    "Number",
    "Strict",
    "Sub",
    "validate",
    "read_json",
    "read_yaml",
    "parse_json",
    "check_no_targets",
    "bounded_text",
]

#: nesting depth above which a JSON document is refused (ours are 4 deep at most)
MAX_JSON_DEPTH = 32
#: the largest JSON file read back (a sidecar or a report is a few kB)
MAX_JSON_BYTES = 16 * 1024 * 1024

# ints and floats that a number in a file may be; a bool is not a number here
Int = StrictInt
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.+-]+$")]


@dataclass(frozen=True)
class Sub:
    """Marks a field kept as a plain dict whose keys the schema ``schema`` checks (a validator of the field does):
    ``Annotated[dict[str, Any] | None, Sub(PreprocessConfig)]``. The schema's walks (:func:`field_at`) follow it."""

    schema: type[BaseModel]


class Strict(BaseModel):
    """No unknown keys; values must have the declared types (ints are not coerced from strings)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


M = TypeVar("M", bound=BaseModel)


def _first_problem(
    e: ValidationError, source: str, options: bool, model: type[BaseModel] | None = None, data: Any = None
) -> str:
    """The first problem in one line: ``<source>: <key>: <what>`` (a file), ``<source>.<key>: <what>`` (options).

    The branches of a union (``auto`` or an integer) are one problem: their messages joined by "or"; an unknown key
    says which keys the schema has there; a ``_target_`` outside a union's choices lists them.
    """
    errors = e.errors(include_url=False)
    # the location's keys in the document (a union's branch tags, ``constrained-int``, ``literal['auto']``, are not)
    keys = [".".join(str(p) for p in _key_path(err["loc"], data)) for err in errors]
    where = keys[0]
    same = [err for err, key in zip(errors, keys) if key == where]
    first = same[0]
    if first["type"] == "extra_forbidden":
        known = _keys_at(model, first["loc"][:-1]) if model is not None else []
        parts = ["unknown option" + (f"; expected one of {', '.join(known)}" if known else "")]
    elif first["type"] == "union_tag_invalid":
        ctx = first.get("ctx") or {}
        parts = [f"_target_ {ctx.get('tag')!r} is none of the classes allowed here ({ctx.get('expected_tags')})"]
        where = f"{where}._target_" if where else "_target_"
    else:
        parts = list(dict.fromkeys(str(err["msg"]).removeprefix("Value error, ") for err in same))
    msg = " or ".join([parts[0], *(m.removeprefix("Input should be ") for m in parts[1:])])
    got = first.get("input")
    shown = (
        ""
        if isinstance(got, (dict, list)) or first["type"] in ("missing", "union_tag_invalid") or "got " in msg
        else f" (got {got!r:.80})"
    )
    others = len(set(keys)) - 1
    more = f"; {others} more problem(s)" if others else ""
    if options:  # a problem of several options together names them itself
        key = f"{source}.{where}" if source and where else where
        if key and msg.startswith(f"{key}."):  # a rule over several options names them itself (data.fold ...)
            return f"{msg}{more}"
        return f"{key}: {msg}{shown}{more}" if key else f"{msg}{more}"
    return f"{source}: {where or 'the document'}: {msg}{shown}{more}"


#: the labels pydantic gives a union's branches in an error's location (not keys of the document)
_BRANCH_LABELS = frozenset({"int", "float", "str", "bool", "none", "dict", "list", "tuple"})


def _key_path(loc: tuple[Any, ...], data: Any) -> list[Any]:
    """The steps of an error's location that are keys of the document: those found in ``data`` as it is walked
    (``test/dice_wt``, a case's id), and names that are keys of a schema (:func:`_is_key`)."""
    path = []
    for part in loc:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, (list, tuple)) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        elif not _is_key(part):
            continue
        else:
            data = None
        path.append(part)
    return path


def _is_key(part: Any) -> bool:
    """Whether a step of an error's location is a key of the document (``folds.0.train_s``), not a union's branch
    (``constrained-int``, ``literal['auto']``, a ``_target_`` tag)."""
    text = str(part)
    return isinstance(part, int) or text.isdigit() or (text.isidentifier() and text not in _BRANCH_LABELS)


def _keys_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys the schema ``model`` declares at ``loc`` (inside nested models, dicts, lists and unions), by their
    names in a document (aliases); ``[]`` when ``loc`` leads nowhere known."""
    import typing

    candidates: list[Any] = [model]
    for step in loc:
        nxt: list[Any] = []
        for tp in candidates:
            for t in _branches(tp):
                if isinstance(t, type) and issubclass(t, BaseModel):
                    for name, f in t.model_fields.items():
                        if step in (name, f.alias):
                            nxt.append(f.annotation)
                    if isinstance(step, str) and not step.isidentifier() and _tagged(t, step):  # a union's tag
                        nxt.append(t)
                elif typing.get_origin(t) in (dict, list, tuple):
                    args = typing.get_args(t)
                    if args:
                        nxt.append(args[-1] if typing.get_origin(t) is dict else args[0])
        candidates = nxt
    out: list[str] = []
    for tp in candidates:
        for t in _branches(tp):
            if isinstance(t, type) and issubclass(t, BaseModel):
                out += [f.alias or name for name, f in t.model_fields.items()]
    return sorted(dict.fromkeys(out))


def _tagged(model: type[BaseModel], tag: str) -> bool:
    """Whether ``model`` is the branch of a discriminated union that ``tag`` (its ``_target_``) selects."""
    import typing

    field = next((f for f in model.model_fields.values() if f.alias == "_target_"), None)
    return field is None or tag in typing.get_args(field.annotation)


def _branches(tp: Any) -> list[Any]:
    """The types a union (or an ``Annotated`` type) may be."""
    import types
    import typing

    if typing.get_origin(tp) is Annotated:
        return _branches(typing.get_args(tp)[0])
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return [b for a in typing.get_args(tp) for b in _branches(a)]
    return [tp]


def validate(
    model: type[M],
    data: Any,
    source: str | Path,
    error: Callable[[str], UserError] = CheckpointError,
    options: bool = False,
) -> M:
    """``data`` checked against ``model``.

    Args:
        model: the schema.
        data: plain values (from a file, a config, keyword arguments).
        source: what ``data`` is: a file (``model.json``) or, with ``options``, an option prefix (``data``).
        error: the exception raised.
        options: ``data`` are options: problems are named ``data.fold: ...``.

    Raises:
        UserError: (``error``) naming ``source`` and the first problem (key, what is wrong, the value).
    """
    try:
        _check_depth(data, source, error)
        return model.model_validate(data)
    except ValidationError as e:
        raise error(_first_problem(e, str(source), options, model, data)) from None


def _check_depth(data: Any, source: str | Path, error: Callable[[str], UserError]) -> None:
    """Refuse documents nested deeper than :data:`MAX_JSON_DEPTH` (iteratively: no recursion)."""
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise error(f"{source}: nested more than {MAX_JSON_DEPTH} levels deep; not a file brats_lightning wrote")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend((v, depth + 1) for v in value)


def read_json(path: str | Path, what: str, error: Callable[[str], UserError] = CheckpointError) -> Any:
    """A JSON file as plain data (size and nesting bounded before parsing).

    Raises:
        UserError: (``error``) missing, unreadable, too large, too deeply nested or not JSON; names ``path``.
    """
    path = Path(path)
    return parse_json(bounded_text(path, what, MAX_JSON_BYTES, error), path, what, error)


def bounded_text(path: Path, what: str, limit: int, error: Callable[[str], UserError]) -> str:
    """A file's text, refused above ``limit`` bytes before it is read (one line naming the file)."""
    try:
        if path.stat().st_size > limit:
            raise error(f"{path}: the {what} is larger than {limit // 2**20} MB; not a file we wrote")
        return path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{path}: cannot read the {what} ({type(e).__name__}: {e})") from None


def parse_json(text: str, source: str | Path, what: str, error: Callable[[str], UserError] = CheckpointError) -> Any:
    """JSON text from ``source`` (a file, or a field inside one) as plain data, its size and nesting bounded before
    the parser runs.

    Raises:
        UserError: (``error``) too large, too deeply nested or not JSON; names ``source``.
    """
    if len(text) > MAX_JSON_BYTES:
        raise error(f"{source}: the {what} is larger than {MAX_JSON_BYTES // 2**20} MB; not a file we wrote")
    depth = 0
    for ch in text:  # bracket depth, before the parser recurses
        if ch in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise error(
                    f"{source}: the {what} is nested more than {MAX_JSON_DEPTH} levels deep; not a file we wrote"
                )
        elif ch in "]}":
            depth -= 1
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise error(f"{source}: the {what} is not valid JSON ({str(e).splitlines()[0]})") from None


#: the largest YAML file read back (a run's config is tens of kB)
MAX_YAML_BYTES = 4 * 1024 * 1024


class _BoundedYamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing aliases (a "billion laughs" expands a few lines into 10^9 nodes; Hydra and
    OmegaConf never write one) and nesting deeper than :data:`MAX_JSON_DEPTH` before it recurses."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:  # noqa: D102 - PyYAML's hook
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.YAMLError(f"an alias (*{event.anchor}); the files this package writes have none")
        self._depth += 1
        try:
            if self._depth > MAX_JSON_DEPTH:
                raise yaml.YAMLError(f"nested more than {MAX_JSON_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def read_yaml(path: str | Path, what: str, error: Callable[[str], UserError] = ConfigError) -> Any:
    """A YAML file as plain data, bounded: its size, its nesting and its aliases are checked before anything is
    built (the safe loader: no Python objects). For the files a run folder holds (``.hydra/config.yaml``,
    ``overrides.yaml``, ``multirun.yaml``), read back as data.

    Raises:
        UserError: (``error``) missing, unreadable, too large, too deeply nested, with an alias, or not YAML;
            names ``path``.
    """
    path = Path(path)
    text = bounded_text(path, what, MAX_YAML_BYTES, error)
    try:
        return yaml.load(text, Loader=_BoundedYamlLoader)  # noqa: S506 - a SafeLoader subclass
    except (yaml.YAMLError, RecursionError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise error(f"{path}: the {what} is not usable YAML ({first})") from None


def check_no_targets(data: Any, source: str | Path, where: str = "") -> None:
    """Refuse any ``_target_`` (or ``_partial_``, ``_args_``) nested in ``data``: a file may not name a callable.

    Raises:
        ConfigError: naming ``source``, the key and the callable it names.
    """
    stack: list[tuple[Any, str]] = [(data, where)]
    while stack:
        value, at = stack.pop()
        if isinstance(value, dict):
            for k, v in value.items():
                key = f"{at}.{k}" if at else str(k)
                if str(k) in ("_target_", "_partial_", "_args_", "_recursive_", "_convert_"):
                    raise ConfigError(
                        f"{source}: {key} names {v!r:.80}: a results folder may not name code to call; it is not run"
                    )
                stack.append((v, key))
        elif isinstance(value, list):
            stack.extend((v, f"{at}[{i}]") for i, v in enumerate(value))
