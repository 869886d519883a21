"""The ``reidbench`` command. Each subcommand's module is imported only when it runs,
so ``reidbench --help`` and ``reidbench data check`` stay fast."""

from __future__ import annotations

import argparse
import sys


def _data_synth(args: argparse.Namespace) -> int:
    import re

    from .datasets.synthetic import synthesize

    if not re.fullmatch(r"\d+x\d+", args.image_size.strip()):
        raise ValueError(f"--image-size {args.image_size!r}: expected HEIGHTxWIDTH in pixels, e.g. 128x64")
    size = tuple(int(v) for v in args.image_size.strip().split("x"))
    if args.workers < 1:
        raise ValueError(f"--workers {args.workers}: expected at least 1")
    from pathlib import Path

    from .cache import cache_lock

    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"--out {args.out}: is a file; expected a folder to write the benchmarks into")
    with cache_lock(Path(args.out) / ".synth.lock", f"synthetic benchmarks in {args.out}"):
        written = synthesize(args.out, flavor=args.flavor, ids=args.ids, seed=args.seed, mask_noise=args.mask_noise,
                             difficulty=args.difficulty, image_size=size, workers=args.workers)
    for flavor, folder in written.items():
        print(f"{flavor:9s} -> {folder}")
    return 0


def _data_check(args: argparse.Namespace) -> int:
    from .datasets.check import run_data_check

    return run_data_check(args)


def _pretrain(args: argparse.Namespace) -> int:
    from .backbones.pretrain import run_pretrain

    return run_pretrain(args)


def build_parser() -> argparse.ArgumentParser:
    from .datasets.synthetic_sets import DEFAULT_DIFFICULTY

    parser = argparse.ArgumentParser(prog="reidbench", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="synthesize or check datasets").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synth", help="write the synthetic benchmarks in the real datasets' layouts")
    synth.add_argument("--out", required=True, help="folder to write into")
    synth.add_argument("--flavor", default="all", choices=["market", "occluded", "cc", "pedes", "all"])
    synth.add_argument("--ids", type=int, default=200, help="identities per flavor (train + test)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--mask-noise", type=float, default=0.0, help="0 = exact part masks")
    synth.add_argument("--difficulty", type=float, default=DEFAULT_DIFFICULTY,
                       help="0 .. 1 nuisance factors (default %(default)s, the embedded benchmark's)")
    synth.add_argument("--image-size", default="128x64", help="HxW")
    synth.add_argument("--workers", type=int, default=2)
    synth.set_defaults(func=_data_synth)

    check = data.add_parser("check", help="parse a dataset and print its counts beside the official ones")
    from .datasets.check import add_data_check_arguments

    add_data_check_arguments(check)
    check.set_defaults(func=_data_check)

    from .annotate.commands import add_annotate_commands

    add_annotate_commands(data)

    pretrain = sub.add_parser("pretrain", help="contrastively pretrain the tiny CLIP on synthetic pairs (cached)")
    from .backbones.pretrain_config import add_pretrain_arguments

    add_pretrain_arguments(pretrain)
    pretrain.set_defaults(func=_pretrain)

    from .harness import commands

    commands.add_commands(sub)
    return parser


# What a bad input raises (ConfigError and DatasetLayoutError are ValueErrors; unknown names are
# KeyErrors; missing, unreadable or unwritable paths OSErrors): one line and exit code 2.
INPUT_ERRORS = (ValueError, LookupError, OSError)


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand. A bad input is one line on stderr (``reidbench CMD: what, where,
    what was expected``) and exit code 2, without a traceback unless ``--debug``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except INPUT_ERRORS as exc:
        if args.debug:
            raise
        command = " ".join(x for x in (args.command, getattr(args, "data_command", None)) if x)
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"reidbench {command}: {message} [reidbench --debug {command} ... shows the traceback]",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
