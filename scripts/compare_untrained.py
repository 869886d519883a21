"""A method trained over seeds against its untrained model, as a results CSV.

    python scripts/compare_untrained.py --method t2i_baseline --dataset synthetic_pedes \
        --out results/t2i_baseline_vs_untrained.csv [key=value ...]

For each seed: the method's model exactly as ``prepare`` builds it, never trained (the
backbone's own embeddings: the row a trained method has to beat), and the same model
trained by ``train_run`` (an MLflow run under ``--output-dir``), both scored on every
test protocol of the dataset. Writes one row per (seed, protocol) plus a mean row, and
the command that made the file as its first line (``# command: ...``). Nothing already
in ``--output-dir`` is removed: a run of the same name is refused, so pass a fresh
``--output-dir`` or ``--resume``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

METRICS = ("R1", "R5", "R10", "mAP", "mINP")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--output-dir", default="runs/compare_untrained")
    parser.add_argument("--out", required=True, help="the CSV to write")
    parser.add_argument("--resume", action="store_true", help="continue runs left by an earlier invocation")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)

    import pandas as pd

    from reidbench.harness.api import train_run
    from reidbench.harness.run_config import build_run_config
    from reidbench.harness.results import write_results_csv
    from reidbench.harness.trainer import evaluate_test, local_device, prepare, summarize_results

    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        cfg = build_run_config(overrides=[f"method={args.method}", f"data.dataset={args.dataset}",
                                          f"preset={args.preset}", f"seed={seed}",
                                          f"output_dir={args.output_dir}", *args.overrides])
        if not args.resume and (Path(cfg.output_dir) / cfg.run_name).exists():
            raise SystemExit(f"{Path(cfg.output_dir) / cfg.run_name} exists: pass a fresh --output-dir or --resume")
        prep = prepare(cfg)
        device = local_device(None)
        untrained = summarize_results(evaluate_test(prep.method.to(device), prep, cfg, device))
        trained = train_run(cfg, resume=args.resume)
        protocols = sorted({key.split("/")[1] for key in untrained})
        for protocol in protocols:
            row = {"method": args.method, "dataset": args.dataset, "preset": args.preset, "seed": seed,
                   "protocol": protocol, "run_id": trained["run_id"]}
            for metric in METRICS:
                key = f"test/{protocol}/{metric}"
                row[f"untrained_{metric}"] = round(untrained[key], 2)
                row[f"trained_{metric}"] = round(trained[key], 2)
                row[f"gain_{metric}"] = round(trained[key] - untrained[key], 2)
            rows.append(row)
    frame = pd.DataFrame(rows)
    numeric = [c for c in frame.columns if c.split("_")[0] in ("untrained", "trained", "gain")]
    for protocol, group in frame.groupby("protocol"):
        mean = {"method": args.method, "dataset": args.dataset, "preset": args.preset, "seed": "mean",
                "protocol": protocol, "run_id": ""}
        mean.update({c: round(group[c].mean(), 2) for c in numeric})
        if len(group) > 1:
            mean.update({f"{c}_std": round(group[c].std(ddof=1), 2) for c in numeric if c.startswith("gain_")})
        frame = pd.concat([frame, pd.DataFrame([mean])], ignore_index=True)
    write_results_csv(frame, args.out, argv)
    print(frame.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
