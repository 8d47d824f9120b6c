"""`speechdvae import-official`: the original authors' checkpoints converted into ours."""

from __future__ import annotations

import argparse


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """`import-official`."""
    parser = sub.add_parser(
        "import-official",
        help="convert the original authors' DVAE-SE checkpoints into speechdvae checkpoints",
        description="Convert every trained_models/<tag>/*_final_epochNNN.pt (with its config.ini) of the official "
        "DVAE-SE release (GPL-3.0) into a speechdvae checkpoint folder OUT/official-<tag>.",
    )
    parser.add_argument("source", help="folder holding trained_models/ (or trained_models/ itself)")
    parser.add_argument("-o", "--out", required=True, help="folder for the converted checkpoints")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Convert the official checkpoints and print the folders written."""
    from ..official import import_official

    for path in import_official(args.source, args.out):
        print(path)
    return 0
