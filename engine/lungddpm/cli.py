"""The `lungddpm` command line: one sub-command per job; user errors print without a traceback."""

from __future__ import annotations

import argparse
import json
import sys

from . import __version__
from .errors import LungDDPMError


def _cmd_info(args: argparse.Namespace) -> int:
    """Print a checkpoint's format, SHA-256, step and configuration as JSON."""
    from .checkpoints import load_model

    model = load_model(args.checkpoint, device="cpu")
    n_params = sum(p.numel() for p in model.denoise_fn.parameters())
    print(json.dumps({"source": vars(model.source), "parameters": n_params, "config": model.config.to_dict()}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(prog="lungddpm", description="Semantic-layout-guided chest CT synthesis (Lung-DDPM).")
    parser.add_argument("--version", action="version", version=f"lungddpm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="describe a model checkpoint (released or lungddpm format)")
    info.add_argument("checkpoint", help="path of a .pt model file")
    info.set_defaults(func=_cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LungDDPMError as exc:
        print(f"lungddpm: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
