"""Synthetic generator throughput: images/s written (JPEG + part mask + parsing map + meta).

    python bench/synth_speed.py [--ids 300] [--workers 2] [--out /tmp/reidbench_synth_speed]

Prints one machine-readable line: ``SUMMARY images=... seconds=... images_per_s=...``.
Target on the 2-core reference machine: >= 1,000 images/s at 128x64.
"""

import argparse
import shutil
import time
from pathlib import Path

from reidbench.datasets.synthetic import synthesize


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ids", type=int, default=300)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--flavor", default="market")
    p.add_argument("--out", default="/tmp/reidbench_synth_speed")
    args = p.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    written = synthesize(out, flavor=args.flavor, ids=args.ids, seed=0, workers=args.workers)
    seconds = time.perf_counter() - t0
    with open(Path(written[args.flavor]) / "reidbench_meta.jsonl") as fh:
        images = sum(1 for _ in fh)
    print(f"SUMMARY flavor={args.flavor} workers={args.workers} images={images} seconds={seconds:.2f} "
          f"images_per_s={images / seconds:.0f}")
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
