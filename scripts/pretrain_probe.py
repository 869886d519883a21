"""One variant of the tiny CLIP's pretraining recipe, scored on the held-out pairs.

    python scripts/pretrain_probe.py --out results/pretrain_recipe_probes.csv lr=5e-4 batch_size=32 steps=2400

``key=value`` overrides fields of ``PretrainConfig`` (the rest stay at their defaults; the
defaults of the time are in the CSV's ``base`` column, as the commit the row was made at).
Trains into a scratch cache (``--cache-dir``), never the shared one, on one thread (so two
probes run side by side on 2 cores), and appends one row to ``--out``: the overrides, the
seconds taken, held-out image-to-caption R@1 and the zero-shot accuracy per attribute.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from reidbench.backbones import pretrain as P
from reidbench.config import load_config


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("overrides", nargs="*", help="PretrainConfig field=value")
    p.add_argument("--out", required=True, help="CSV to append the row to")
    p.add_argument("--cache-dir", default=None, help="scratch cache (default: a new temporary directory)")
    args = p.parse_args()
    try:
        cfg = load_config(P.PretrainConfig, overrides=args.overrides)
    except ValueError as err:  # an unknown field, a value of the wrong type, or a config PretrainConfig refuses
        print(f"pretrain_probe: {err}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    started = time.time()
    cache = args.cache_dir or tempfile.mkdtemp(prefix="reidbench-pretrain-probe-")
    record = P.read_record(P.pretrain_tiny(cfg, cache_dir=cache, stream=None))
    held = record["heldout"]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    row = {"overrides": " ".join(args.overrides) or "(defaults)", "commit": commit,
           "seconds_1_thread": round(time.time() - started), "final_loss": round(record["final_loss"], 3),
           "R1": round(held["image_to_caption_R1"], 3),
           **{f: round(v["accuracy"], 3) for f, v in sorted(held["zero_shot"].items())}}
    out = Path(args.out)
    new = not out.exists()
    with out.open("a", newline="") as f:
        if new:
            f.write(f"# command: python scripts/pretrain_probe.py --out {args.out} KEY=VALUE ... (one row per run)\n")
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
    print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
