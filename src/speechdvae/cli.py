"""The `speechdvae` command line: one sub-command per job, each a thin layer over the library."""
from __future__ import annotations

import argparse
import sys


class UserError(Exception):
    """An error the user can fix (bad path, bad option): printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speechdvae",
        description="Dynamical VAEs for speech: build corpora, train speech priors, evaluate them "
                    "and enhance noisy speech.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    data = sub.add_parser("data", help="build corpora, manifests and noisy mixtures",
                          description="Build corpora, manifests and noisy mixtures.")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    from .data import open_corpus
    open_corpus.add_arguments(data_sub.add_parser(
        "open", help="download and convert the open speech + noise corpus from Debian packages",
        description=open_corpus.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    return parser


def _version() -> str:
    from . import __version__
    return __version__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"speechdvae: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("speechdvae: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
