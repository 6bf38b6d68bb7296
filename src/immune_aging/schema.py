"""Check a mapping read from YAML against a frozen dataclass.

:func:`build` checks every key of the mapping against the dataclass's fields:
each field must be present and each key known (a misspelt one gets a
suggestion), and each value of the field's type and within the bounds of its
metadata (``ge``/``gt``/``le``/``lt`` and ``choices``); then a ``problem()``
method of the dataclass, when it has one, checks constraints across keys. Types:
``bool``, ``int``, ``float`` (an integer is accepted), ``str``, ``X | None``,
``list[X]``, ``Literal[...]`` and nested dataclasses. A fault raises
:class:`~immune_aging.errors.ParamsError` naming where it is.
"""

from __future__ import annotations

import dataclasses
import difflib
import reprlib
import types
import typing
from typing import Any, Literal, TypeVar

from immune_aging.errors import ParamsError

T = TypeVar("T")


def suggest(key: str, known: typing.Iterable[str]) -> str:
    """Return a hint naming the known key closest to ``key`` (empty when none is close)."""
    match = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def build(cls: type[T], raw: Any, where: str) -> T:
    """Return an instance of dataclass ``cls`` from a mapping, checked as the module says.

    Parameters
    ----------
    cls
        A frozen dataclass; field metadata may hold bounds and choices.
    raw
        The mapping read from YAML.
    where
        Prefix of error messages (``params.yaml: qc``).

    Returns
    -------
    cls
        The checked instance.

    Raises
    ------
    ParamsError
        ``<where>.<key>: <what is wrong>``.
    """
    if not isinstance(raw, dict):
        raise ParamsError(f"{where}: expected a mapping of keys, got {_show(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            raise ParamsError(f"{where}.{key}: unknown key{suggest(str(key), fields)}")
    values = {}
    for fname, fdef in fields.items():
        if fname not in raw:
            raise ParamsError(f"{where}.{fname}: missing key")
        values[fname] = _check(hints[fname], raw[fname], f"{where}.{fname}", fdef.metadata)
    obj = cls(**values)
    problem = obj.problem() if hasattr(obj, "problem") else None
    if problem is not None:
        raise ParamsError(f"{where}.{problem[0]}: {problem[1]}")
    return obj


#: Shortens the values shown in messages (a YAML alias can make a value huge).
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict = 2, 4, 4
_SHORT.maxstring, _SHORT.maxother = 200, 200


def _show(value: Any) -> str:
    return "null" if value is None else _SHORT.repr(value)


def _check(tp: Any, value: Any, where: str, meta: typing.Mapping[str, Any]) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check(inner[0], value, where, meta)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ParamsError(
                f"{where}: expected one of {', '.join(map(repr, choices))}, got {_show(value)}"
            )
        return value
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ParamsError(f"{where}: expected a list, got {_show(value)}")
        return [_check(item, v, f"{where}[{i}]", {}) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{where}: expected true or false, got {_show(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{where}: expected an integer{_bounds(meta)}, got {_show(value)}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ParamsError(f"{where}: expected a number{_bounds(meta)}, got {_show(value)}")
        value = float(value)
    elif tp is str:
        if not isinstance(value, str):
            raise ParamsError(f"{where}: expected a string, got {_show(value)}")
    else:  # pragma: no cover - schema error, not user error
        raise TypeError(f"unsupported parameter type {tp!r} at {where}")
    _check_bounds(value, where, meta)
    return value


def _bounds(meta: typing.Mapping[str, Any]) -> str:
    words = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    parts = [f"{words[k]} {meta[k]}" for k in ("ge", "gt", "le", "lt") if k in meta]
    return (" " + " and ".join(parts)) if parts else ""


def _check_bounds(value: Any, where: str, meta: typing.Mapping[str, Any]) -> None:
    tests = {
        "ge": lambda v, b: v >= b,
        "gt": lambda v, b: v > b,
        "le": lambda v, b: v <= b,
        "lt": lambda v, b: v < b,
    }
    for key, test in tests.items():
        if key in meta and not test(value, meta[key]):
            kind = "an integer" if isinstance(value, int) else "a number"
            raise ParamsError(f"{where}: expected {kind}{_bounds(meta)}, got {_show(value)}")
    if "choices" in meta and value not in meta["choices"]:
        raise ParamsError(f"{where}: expected one of {meta['choices']}, got {_show(value)}")
