"""Command-line flags generated from the config dataclasses: one source of defaults and help.

A config field is written once, in its library, with its default and a comment::

    t: float = 20_000  # balancing threshold: at most ~t pairs per entry

and every CLI, DAG param and doc takes it from there: :func:`add_config_flags` turns each field
into a flag (``--t``; bool fields become ``--x/--no-x``, ``tuple[T, ...]`` fields ``nargs``),
with the field's default and its comment as help text, and :func:`config_from_args` builds the
dataclass back from the parsed namespace. :func:`field_default` / :func:`field_help` give DAG
params the same default and description.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import io
import shlex
import tokenize
import types
import typing
from collections.abc import Callable
from functools import cache

MISSING = dataclasses.MISSING


@cache
def _comments(cls: type) -> dict[str, str]:
    """``{field: comment}`` of one class body: the ``# comment`` ending a field's line (or the
    comment lines right above it)."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out: dict[str, str] = {}
    pending: list[str] = []
    lines = source.splitlines()
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    comments_at = {t.start[0]: t.string.lstrip("#").strip() for t in tokens if t.type == tokenize.COMMENT}
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(comments_at.get(number, ""))
            continue
        head = stripped.split("#", 1)[0]
        name = head.split(":", 1)[0].strip()
        if ":" in head and name.isidentifier() and line.startswith("    ") and not line.startswith("     "):
            text = comments_at.get(number) or " ".join(pending)
            if text:
                out[name] = text
        pending = []
    return out


def field_help(cls: type, name: str) -> str:
    """The comment written beside field ``name`` of dataclass ``cls`` (or a base class)."""
    for klass in cls.__mro__:
        text = _comments(klass).get(name)
        if text:
            return text
    return ""


def field_default(cls: type, name: str):
    """The default of field ``name`` (``default_factory()`` called); MISSING if it has none."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def _unwrap(hint) -> tuple[type, bool, bool]:
    """(element type, is a tuple, is optional) of a field's type hint."""
    optional = False
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional, hint = True, args[0]
        origin = typing.get_origin(hint)
    if origin in (tuple, list):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return (args[0] if args else str), True, optional
    if origin is typing.Literal:
        return type(typing.get_args(hint)[0]), False, optional
    return hint, False, optional


def add_config_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, *,
                     skip: tuple[str, ...] = (), only: tuple[str, ...] | None = None,
                     flags: dict[str, str] | None = None, choices: dict[str, tuple] | None = None,
                     required: tuple[str, ...] = (), help_extra: dict[str, str] | None = None,
                     prefix: str = "", no_defaults: bool = False) -> list[str]:
    """Add a flag per field of dataclass ``cls`` (nested dataclass fields are left to the
    caller): ``--field-name`` unless ``flags`` names it, the field's default and comment (+
    ``help_extra``) as help, ``dest`` = ``prefix + name``. Fields without a default, and those in
    ``required``, are required. ``no_defaults``: every default is None (a config file's values
    then win over unset flags). Returns the dests added."""
    hints = typing.get_type_hints(cls)
    flags, choices, help_extra = flags or {}, choices or {}, help_extra or {}
    added = []
    for f in dataclasses.fields(cls):
        if f.name in skip or (only is not None and f.name not in only) or not f.init:
            continue
        kind, many, _ = _unwrap(hints[f.name])
        if dataclasses.is_dataclass(kind):
            continue
        default = field_default(cls, f.name)
        text = " ".join(t for t in (field_help(cls, f.name), help_extra.get(f.name, "")) if t)
        kwargs: dict = {"dest": prefix + f.name, "help": text or None}
        if default is MISSING or f.name in required:
            kwargs["required"] = True
        else:
            kwargs["default"] = None if no_defaults else (list(default) if many else default)
            shown = ", ".join(map(str, default)) if many else default
            kwargs["help"] = f"{text} (default: {shown!s})".strip() if shown not in ("", None, ()) else text or None
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = kind if kind in (int, float, str) else str
            if many:
                kwargs["nargs"] = "+" if kwargs.get("required") else "*"
        if f.name in choices:
            kwargs["choices"] = choices[f.name]
        if kwargs.get("help"):
            kwargs["help"] = kwargs["help"].replace("%", "%%")
        parser.add_argument(flags.get(f.name, "--" + f.name.replace("_", "-")), **kwargs)
        added.append(prefix + f.name)
    return added


def config_values(cls: type, args: argparse.Namespace, prefix: str = "") -> dict:
    """``{field: value}`` of the flags :func:`add_config_flags` added for ``cls`` that were
    parsed (tuple fields as tuples; None values, i.e. unset flags with ``no_defaults``, left out)."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if not hasattr(args, prefix + f.name):
            continue
        value = getattr(args, prefix + f.name)
        if value is None:
            continue
        _, many, _ = _unwrap(hints[f.name])
        values[f.name] = tuple(value) if many else value
    return values


def config_from_args(cls: type, args: argparse.Namespace, prefix: str = "", **overrides):
    """``cls(**flags, **overrides)`` from a namespace parsed with :func:`add_config_flags`."""
    return cls(**{**config_values(cls, args, prefix), **overrides})


def require_shards(prog: str, flag: str, spec: str, expand: Callable[[str], list[str]] | None = None) -> None:
    """Before any work: exit with one line, ``<prog>: <flag> '<part>': no file matches`` (or
    what else is wrong with that part), when a part of the shard spec ``spec`` names no file
    (``expand``: :func:`storage.layout.expand_shards` unless given). ``pipe:`` parts are left
    to the reader."""
    from storage.layout import ShardsNotFoundError, expand_shards

    parts = [part for part in spec.split("::") if part and not part.startswith("pipe:")]
    if not parts:
        return
    try:
        (expand or expand_shards)("::".join(parts))
    except ShardsNotFoundError as err:
        raise SystemExit(f"{prog}: {flag} {shlex.quote(err.part)}: {err.reason}") from None
