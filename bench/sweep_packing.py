"""Trials per hour of the ProFD smoke grid with one trial per GPU against several packed on it.

    python bench/sweep_packing.py                      # 1 trial per GPU, then 4 per GPU
    python bench/sweep_packing.py --pack 4 --pack 8 --cpus-per-trial 2 --seeds 0,1

Tiny-preset trials use a sliver of a modern GPU (a 2.6M-parameter CLIP at 128x64, P8 x K4),
so a sweep with ``--gpus-per-trial 1`` leaves it mostly idle. Each mode runs the same grid
(``sweeps/ablation_profd.py --smoke``: 10 ProFD rows x the seeds) as its own sweep, from a
warm data cache, and the script prints and writes (``--out``) wall time and trials per hour.
Modes run one after another on the same machine; run the script twice to see the spread.

Needs CUDA: with no GPU, Tune would wait forever for GPU resources, so the script stops and
says so (exit 2). Nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def profd_smoke_trials(args):
    sys.path.insert(0, str(ROOT / "sweeps"))
    import ablation_profd

    return ablation_profd.trials(args)


def warm_data(overrides: list[str]) -> None:
    """Generate (or find cached) the smoke benchmark and the word tokenizer before any timing."""
    from reidbench.backbones import build_backbone
    from reidbench.harness.run_config import build_run_config
    from reidbench.harness.trainer import load_dataset

    cfg = build_run_config(overrides=overrides)
    load_dataset(cfg)
    build_backbone(cfg.backbone.kind, cfg.backbone.preset, cfg.backbone.pretrained)


def run_mode(per_gpu: int, seeds: str, cpus: float, out_dir: Path) -> dict:
    from reidbench.harness.tune import sweep_main

    experiment = f"packing_{per_gpu}_per_gpu"
    argv = ["--smoke", "--seeds", seeds, "--experiment", experiment, "--output-dir", str(out_dir / experiment),
            "--gpus-per-trial", f"{1.0 / per_gpu:.6g}", "--cpus-per-trial", f"{cpus:g}"]
    started = time.perf_counter()
    code = sweep_main(profd_smoke_trials, ["synthetic_occluded"], "packing bench", experiment, argv=argv,
                      defaults=("data.val_fraction=0",))
    wall = time.perf_counter() - started
    trials = len(profd_smoke_trials(argparse.Namespace(smoke=True))) * len(seeds.split(","))
    return {"trials_per_gpu": per_gpu, "trials": trials, "exit_code": code, "wall_seconds": round(wall, 1),
            "trials_per_hour": round(3600.0 * trials / wall, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pack", type=int, action="append", default=None,
                   help="trials per GPU of the packed mode(s) (repeatable; default 4); 1 always runs first")
    p.add_argument("--seeds", default="0", help="comma-separated seeds of the grid (default 0: 10 trials)")
    p.add_argument("--cpus-per-trial", type=float, default=2.0)
    p.add_argument("--out", default="runs/bench/sweep_packing.json")
    args = p.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("bench/sweep_packing.py needs a CUDA GPU (torch sees none here); it measures how many tiny-preset "
              "Tune trials one GPU serves packed against one at a time", file=sys.stderr)
        return 2
    import ray

    ray.init(include_dashboard=False, log_to_driver=False)
    modes = [1, *sorted(set(args.pack or [4]) - {1})]
    cpus = ray.cluster_resources().get("CPU", 1)
    print(f"[bench] {torch.cuda.get_device_name(0)}, {cpus:g} CPUs; modes (trials per GPU): {modes}")
    from reidbench.harness.tune import SMOKE_OVERRIDES

    warm_data([*SMOKE_OVERRIDES, "method=profd", "data.dataset=synthetic_occluded"])
    work = Path(tempfile.mkdtemp(prefix="sweep_packing_"))
    results = []
    try:
        for per_gpu in modes:
            if per_gpu * args.cpus_per_trial > cpus:
                print(f"[bench] {per_gpu} trials per GPU need {per_gpu * args.cpus_per_trial:g} CPUs "
                      f"(--cpus-per-trial {args.cpus_per_trial:g}); the machine has {cpus:g}, so only "
                      f"{int(cpus // args.cpus_per_trial)} run at once", file=sys.stderr)
            results.append(run_mode(per_gpu, args.seeds, args.cpus_per_trial, work))
            print(f"[bench] {results[-1]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = results[0]["trials_per_hour"]
    print("\n| trials per GPU | trials | wall s | trials/hour | vs one at a time |\n|---|---|---|---|---|")
    for r in results:
        print(f"| {r['trials_per_gpu']} | {r['trials']} | {r['wall_seconds']} | {r['trials_per_hour']} | "
              f"{r['trials_per_hour'] / base:.2f}x |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": torch.cuda.get_device_name(0), "cpus": cpus, "results": results}, indent=2))
    return 0 if all(r["exit_code"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
