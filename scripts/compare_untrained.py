"""A method trained over seeds (and, optionally, over values of one hyperparameter) against
its untrained model, as a results CSV.

    python scripts/compare_untrained.py --method t2i_baseline --dataset synthetic_pedes \
        --out results/t2i_baseline_vs_untrained.csv [key=value ...]
    python scripts/compare_untrained.py --method baseline --dataset synthetic_market,synthetic_cc --seeds 0 \
        --values params.image.lr=1e-4,3e-5,1e-5,3e-6 --out results/tiny_lr_calibration.csv data.val_fraction=0
    python scripts/compare_untrained.py --method baseline,clip_reid --dataset synthetic_market --seeds 0 \
        --untrained-only --out results/untrained.csv

For each dataset and seed: the method's model exactly as ``prepare`` builds it, never
trained (the backbone's own embeddings: the row a trained method has to beat), and the
same model trained by ``train_run`` (an MLflow run under ``--output-dir``), once per value
of ``--values`` (each value's runs are the ablation ``<key's last part>=<value>``), all
scored on every test protocol of the dataset (``--method`` may name several methods;
``--untrained-only`` scores the untrained models and trains nothing). Writes one row per
(method, dataset, value, seed, protocol) plus a mean row per (method, dataset, value,
protocol), and the command that made the file as its first line (``# command: ...``). Nothing already in ``--output-dir`` is
removed: a run of the same name is refused, so pass a fresh ``--output-dir`` or
``--resume`` (which also re-scores finished runs without training them again).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

METRICS = ("R1", "R5", "R10", "mAP", "mINP")


def value_grid(spec: str | None) -> list[tuple[str, str | None]]:
    """``--values KEY=V1,V2`` -> ``[(KEY, V1), (KEY, V2)]``; no spec: one point, the preset's own."""
    if not spec:
        return [("", None)]
    key, sep, values = spec.partition("=")
    if not sep or not key or not values:
        raise SystemExit(f"--values {spec!r}: expected KEY=V1,V2,... (e.g. params.image.lr=1e-4,1e-5)")
    return [(key, v) for v in values.split(",")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", required=True, help="a registered method, or several comma-separated")
    parser.add_argument("--dataset", required=True, help="a registered dataset, or several comma-separated")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--values", default=None, metavar="KEY=V1,V2",
                        help="train once per value of one run-config key (e.g. params.image.lr=1e-4,1e-5)")
    parser.add_argument("--output-dir", default="runs/compare_untrained")
    parser.add_argument("--out", required=True, help="the CSV to write")
    parser.add_argument("--resume", action="store_true", help="continue runs left by an earlier invocation")
    parser.add_argument("--untrained-only", action="store_true", help="score the untrained models; train nothing")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    grid = value_grid(args.values)

    import pandas as pd

    from reidbench.harness.api import train_run
    from reidbench.harness.results import write_results_csv
    from reidbench.harness.run_config import build_run_config
    from reidbench.harness.trainer import evaluate_test, local_device, prepare, summarize_results

    rows = []
    for method, dataset in ((m, d) for m in args.method.split(",") for d in args.dataset.split(",")):
        for seed in (int(s) for s in args.seeds.split(",")):
            untrained = None
            for key, value in grid:
                point = [] if value is None else [f"{key}={value}", f"tracking.ablation={key.split('.')[-1]}={value}"]
                cfg = build_run_config(overrides=[f"method={method}", f"data.dataset={dataset}",
                                                  f"preset={args.preset}", f"seed={seed}",
                                                  f"output_dir={args.output_dir}", *args.overrides, *point])
                if not args.resume and not args.untrained_only and (Path(cfg.output_dir) / cfg.run_name).exists():
                    raise SystemExit(f"{Path(cfg.output_dir) / cfg.run_name} exists: pass a fresh --output-dir "
                                     "or --resume")
                if untrained is None:  # the untrained model does not depend on training hyperparameters
                    prep = prepare(cfg)
                    device = local_device(None)
                    untrained = summarize_results(evaluate_test(prep.method.to(device), prep, cfg, device))
                trained = None if args.untrained_only else train_run(cfg, resume=args.resume)
                for protocol in sorted({k.split("/")[1] for k in untrained}):
                    row = {"method": method, "dataset": dataset, "preset": args.preset,
                           **({key: value} if value is not None and trained else {}), "seed": seed, "protocol": protocol,
                           "run_id": trained["run_id"] if trained else ""}
                    for metric in METRICS:
                        name = f"test/{protocol}/{metric}"
                        row[f"untrained_{metric}"] = round(untrained[name], 2)
                        if trained:
                            row[f"trained_{metric}"] = round(trained[name], 2)
                            row[f"gain_{metric}"] = round(trained[name] - untrained[name], 2)
                    rows.append(row)
                if args.untrained_only:
                    break  # the untrained model is the same for every value
    frame = pd.DataFrame(rows)
    numeric = [c for c in frame.columns if c.split("_")[0] in ("untrained", "trained", "gain")]
    by = ["method", "dataset", *([grid[0][0]] if grid[0][1] is not None and not args.untrained_only else []),
          "protocol"]
    means = []
    for keys, group in frame.groupby(by, sort=False):
        mean = {"preset": args.preset, **dict(zip(by, keys)), "seed": "mean", "run_id": ""}
        mean.update({c: round(group[c].mean(), 2) for c in numeric})
        if len(group) > 1:
            mean.update({f"{c}_std": round(group[c].std(ddof=1), 2) for c in numeric if c.startswith("gain_")})
        means.append(mean)
    frame = pd.concat([frame, pd.DataFrame(means)], ignore_index=True)
    write_results_csv(frame, args.out, argv)
    print(frame.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
