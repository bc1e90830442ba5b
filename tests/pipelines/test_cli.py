"""Flags generated from config dataclasses: defaults, help text and types come from the field."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import pytest

from pipelines.cli import add_config_flags, config_from_args, field_default, field_help


@dataclass(frozen=True)
class Example:
    """A config as the libraries write them."""

    path: str  # where the input is
    t: float = 20_000  # balancing threshold: at most ~t pairs per entry (100% kept below it)
    # the comment may also stand on the line above
    parts: int = 8
    names: tuple[str, ...] = ("a", "b")  # several names
    fast: bool = True  # go fast
    note: str | None = None  # optional text
    inner: dict = field(default_factory=dict)  # not a flag type: passed as text


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_config_flags(p, Example, skip=("inner",), flags={"names": "--name"}, choices={"parts": (4, 8)})
    return p


def test_defaults_types_and_round_trip():
    cfg = config_from_args(Example, parser().parse_args(["--path", "x"]))
    assert cfg == Example("x")
    cfg = config_from_args(Example, parser().parse_args(
        ["--path", "x", "--t", "5", "--parts", "4", "--name", "c", "d", "--no-fast", "--note", "hi"]))
    assert cfg == Example("x", 5.0, 4, ("c", "d"), False, "hi")


def test_required_and_choices_enforced():
    with pytest.raises(SystemExit):
        parser().parse_args([])
    with pytest.raises(SystemExit):
        parser().parse_args(["--path", "x", "--parts", "5"])


def test_help_is_the_field_comment_with_the_default():
    text = parser().format_help()
    assert "balancing threshold: at most ~t pairs per entry (100% kept below it) (default: 20000)" in " ".join(text.split())
    assert field_help(Example, "parts") == "the comment may also stand on the line above"
    assert field_default(Example, "names") == ("a", "b")
    assert field_default(Example, "inner") == {}


def test_every_product_cli_explains_every_flag():
    """No flag of a product CLI goes without help text (pretrain.py and contamination_report.py
    once explained almost none)."""
    from pipelines import (
        build_pool,
        build_queries,
        build_queries_beam,
        build_wit,
        contamination_report,
        evaluate,
        pretrain,
        wit_images,
    )

    for module in (build_pool, build_queries, build_queries_beam, build_wit, contamination_report, evaluate, pretrain,
                   wit_images):
        p = module.build_parser()
        silent = [a.option_strings[0] for a in p._actions if a.option_strings and not a.help
                  and a.option_strings[0] != "-h"]
        assert not silent, f"{module.__name__}: flags without help: {silent}"
