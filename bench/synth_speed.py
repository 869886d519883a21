"""Synthetic generator throughput: images/s written (JPEG + part mask + parsing map + meta).

    python bench/synth_speed.py [--ids 300] [--workers 2] [--out /tmp/reidbench_synth_speed]
    python bench/synth_speed.py --breakdown      # where one worker's time goes, per image

Prints one machine-readable line: ``SUMMARY images=... seconds=... images_per_s=... import_seconds=...``.
Target on the 2-core reference machine: >= 1,000 images/s at 128x64. ``images_per_s`` times
the ``synthesize`` call, with the modules imported; ``import_seconds`` is the one-off cost of
importing numba and loading the compiled kernels (about 1 s per process once they are cached,
about 5 s the first time, when they compile).

``--breakdown`` renders 600 images of the flavor in this process, one step at a time,
and prints milliseconds per image for each step: drawing (``render_spec``), the JPEG,
the two label-map PNGs, the per-image RNG, the texts, and writing the three files
under ``--out``. Session 6 (2026-11-23, market, difficulty 0.5), three runs alternated with
the numpy renderer it replaced, ms per image: render 0.65-0.79 (numpy: 1.36-1.46), JPEG
0.12-0.14, PNGs 0.10-0.12, writes to /dev/shm 0.13-0.15; everything 1.03-1.22 (1.79-1.92).
The host's speed drifts by a quarter within an hour, so only alternated runs compare.
"""

import argparse
import shutil
import time
from pathlib import Path

from reidbench.datasets.render import kernels
from reidbench.datasets.synthetic import synthesize

t_import = time.perf_counter()
kernels()  # numba: imported, and the compiled kernels loaded, once per process
IMPORT_SECONDS = time.perf_counter() - t_import


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ids", type=int, default=300)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--flavor", default="market")
    p.add_argument("--out", default="/tmp/reidbench_synth_speed")
    p.add_argument("--breakdown", action="store_true", help="time each step of one worker, per image")
    args = p.parse_args()
    if args.breakdown:
        breakdown(args.flavor, Path(args.out))
        return
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    written = synthesize(out, flavor=args.flavor, ids=args.ids, seed=0, workers=args.workers)
    seconds = time.perf_counter() - t0
    with open(Path(written[args.flavor]) / "reidbench_meta.jsonl") as fh:
        images = sum(1 for _ in fh)
    print(f"SUMMARY flavor={args.flavor} workers={args.workers} images={images} seconds={seconds:.2f} "
          f"images_per_s={images / seconds:.0f} import_seconds={IMPORT_SECONDS:.2f}")
    shutil.rmtree(out, ignore_errors=True)


def breakdown(flavor: str, out: Path, n: int = 600, difficulty: float = 0.5) -> None:
    from reidbench.datasets import synthetic as S

    specs = S.plan(flavor, 60, 12, 0, difficulty)[:n]
    cfg = S.WorldConfig(seed=0, difficulty=difficulty, height=128, width=64, mask_noise=0.0)
    ns = S._FLAVOR_NS[flavor]
    world = S._world(cfg)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    steps = dict.fromkeys(("rng", "render", "jpeg", "png", "texts", "write"), 0.0)
    rng = S._rng(cfg.seed, S._S_IMAGE, ns)
    for i, spec in enumerate(specs):
        t0 = time.perf_counter()
        S._rekey(rng, cfg.seed, S._S_IMAGE, ns, spec.index)  # as the workers do
        t1 = time.perf_counter()
        res, _ = S.render_spec(world, ns, spec, rng)
        t2 = time.perf_counter()
        jpeg = S._jpeg_bytes(res.image, world.camera(ns, spec.camera).jpeg_quality)
        t3 = time.perf_counter()
        maps = S.png_bytes(res.part), S.png_bytes(res.lip)
        t4 = time.perf_counter()
        world.texts(spec.ns, spec.k, spec.outfit_ns, spec.outfit)
        t5 = time.perf_counter()
        for suffix, data in ((".jpg", jpeg), (".part.png", maps[0]), (".lip.png", maps[1])):
            S._write(str(out / f"{i}{suffix}"), data)
        t6 = time.perf_counter()
        for key, seconds in zip(steps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)):
            steps[key] += seconds
    total = sum(steps.values())
    print(" ".join(f"{k}={v / len(specs) * 1e3:.3f}ms" for k, v in steps.items()))
    print(f"SUMMARY breakdown flavor={flavor} images={len(specs)} ms_per_image={total / len(specs) * 1e3:.3f} "
          f"one_worker_images_per_s={len(specs) / total:.0f}")
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
