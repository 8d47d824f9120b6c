"""The `speechdvae` command line: one module per group of sub-commands, each defining its parsers beside the
functions that run them. It is a thin layer over the library, which never imports it."""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..errors import SpeechDVAEError, UserError
from . import data, enhance, evaluate, official, train

__all__ = ["UserError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The parser of every sub-command; each parsed namespace carries the `func` that runs it."""
    parser = argparse.ArgumentParser(
        prog="speechdvae",
        description="Dynamical VAEs for speech: build corpora, train speech priors, evaluate them "
        "and enhance noisy speech.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (data, official, enhance, evaluate, train):
        module.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command; a library error becomes one line on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SpeechDVAEError as err:
        print(f"speechdvae: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("speechdvae: interrupted", file=sys.stderr)
        return 130
