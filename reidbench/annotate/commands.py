"""The ``reidbench data caption | styles | describe | parse`` subcommands. Importing this
module imports no torch or transformers (``reidbench --help`` stays fast)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_annotate_commands"]


def _runner(module: str, function: str):
    def run(args: argparse.Namespace) -> int:
        import importlib

        try:
            return getattr(importlib.import_module(f"reidbench.annotate.{module}"), function)(args)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except KeyError as err:  # an unknown dataset name; the message lists the known ones
            print(f"error: {err.args[0] if err.args else err}", file=sys.stderr)
            return 2

    return run


def add_annotate_commands(data: argparse._SubParsersAction) -> None:
    """Add the annotation commands to the ``reidbench data`` subparsers."""
    from .caption import add_caption_arguments
    from .describe import add_describe_arguments
    from .parse import add_parse_arguments
    from .styles import add_styles_arguments

    for name, help_text, add, module, function in (
        ("caption", "CLIP-SCGI captions for a dataset from a local vision-language model (texts file)",
         add_caption_arguments, "caption", "run_caption"),
        ("styles", "cluster a dataset's texts into writing styles (CLIP text encoder + DBSCAN) for data describe",
         add_styles_arguments, "styles", "run_styles"),
        ("describe", "BDAM identity and clothing descriptions from a local vision-language model (texts file)",
         add_describe_arguments, "describe", "run_describe"),
        ("parse", "LIP human-parsing maps beside a dataset from a local segmentation model",
         add_parse_arguments, "parse", "run_parse"),
    ):
        parser = data.add_parser(name, help=help_text)
        add(parser)
        parser.set_defaults(func=_runner(module, function))
