"""The ``--decontaminate*`` flags of ``build_wit.py`` / ``wit_images.py`` (from
:class:`~curation.images.decontaminate.DecontaminateConfig`). Two image stages use them
(:mod:`curation.images.decontaminate`): ``evaltext`` before the URL guard (eval URLs and
captions: nothing is downloaded for those rows) and ``decontaminate`` between the image dedup and
the shards (eval images by pHash); the eval index they read is written first by
:func:`contamination.evalindex.write_eval_index`.
"""

from __future__ import annotations

import argparse

from curation.images.decontaminate import DecontaminateConfig
from pipelines.cli import add_config_flags, config_values

PREFIX = "decontaminate_"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--decontaminate DATASET...`` and ``--decontaminate-distance`` flags."""
    g = parser.add_argument_group("eval decontamination (eval URLs/captions before download, eval images after the "
                                  "image dedup)")
    add_config_flags(g, DecontaminateConfig, prefix=PREFIX,
                     flags={"datasets": "--decontaminate", "max_distance": "--decontaminate-distance"},
                     help_extra={"datasets": "(fashion-mnist, mnist, digits, a class_name/*.jpg folder, .tar shards): "
                                             "before download, rows with an eval URL or normalised caption (reasons "
                                             "eval_url/eval_caption, rejects/evaltext/); after it, images whose pHash "
                                             "is within --decontaminate-distance of an eval image's (eval_duplicate, "
                                             "rejects/decontaminate/)"})


def config_from_args(args: argparse.Namespace) -> DecontaminateConfig:
    """The :class:`DecontaminateConfig` of the parsed flags."""
    return DecontaminateConfig(**config_values(DecontaminateConfig, args, PREFIX))
