"""``reidbench demo``: the embedded default benchmark (docs/design.md).

Synthesizes the benchmarks and pretrains the tiny CLIP (both cached), then trains
and evaluates every registered method with the ``tiny`` preset, and prints a method x
benchmark x protocol table of R1 / mAP / mINP, the minutes each method took and the
MLflow location. Prints the stage and an ETA as it goes.

Budget: under 15 minutes on 2 CPU cores once the data and the tiny CLIP are cached,
with room for every registered method. Six image methods on the three image
benchmarks at half the tiny schedule would take about twice the default plan (9.7 min timed, README),
so by default each method trains once per task, on one benchmark that every method of
the task can run on (``DEMO_BENCHMARKS``): the image methods on ``synthetic_cc``, whose
test split is scored under both the cloth-changing (``cc``, the headline) and the
same-clothes protocols, and on which CCAF, which needs identities that change clothes,
also runs; the text methods on ``synthetic_pedes``. ``--all-benchmarks`` runs every
method on every synthetic benchmark of its task instead (a method requiring clothes
ids still only where identities change clothes). Each run trains half of the tiny
preset's epochs (``optim.epochs_scale``, which shrinks warmup and lr milestones with
them) unless ``--epochs-scale`` says otherwise. Its numbers are therefore a quick look,
not the tiny-preset results ``reidbench train --preset tiny`` and the sweeps report;
the table header says which schedule produced it.
"""

from __future__ import annotations

import argparse
import time

from ..methods import get_method, list_methods
from .run_config import build_run_config

BENCHMARKS = {"image": ("synthetic_market", "synthetic_occluded", "synthetic_cc"), "text": ("synthetic_pedes",)}
# What the demo runs by default: one benchmark per task that every method of the task can run on.
DEMO_BENCHMARKS = {"image": ("synthetic_cc",), "text": ("synthetic_pedes",)}
# The protocols of each benchmark in the table, the headline first.
PROTOCOLS = {"synthetic_market": ("standard",), "synthetic_occluded": ("standard",),
             "synthetic_cc": ("cc", "same_clothes"), "synthetic_pedes": ("t2i",)}
# Benchmarks whose identities change clothes. The other synthetic sets dress each identity in
# one outfit, so their clothes id is the identity, and a method that learns from clothes ids
# (CCAF's clothes prompts and adversarial projection) would be told to forget the identity.
CLOTH_CHANGING = ("synthetic_cc",)


def demo_plan(pattern: str = "*", all_benchmarks: bool = False) -> list[tuple[str, str]]:
    """(method, benchmark) runs: every method on the demo benchmark of each of its tasks (with
    ``all_benchmarks``, on every benchmark of its task), a method requiring clothes ids only
    on cloth-changing benchmarks."""
    benchmarks = BENCHMARKS if all_benchmarks else DEMO_BENCHMARKS
    plan = []
    for name in list_methods(pattern):
        cls = get_method(name)
        for task in cls.tasks:
            plan += [(name, b) for b in benchmarks[task] if "clothes_id" not in cls.requires or b in CLOTH_CHANGING]
    return plan


def run_demo(args: argparse.Namespace) -> int:
    from ..backbones import build_clip
    from .api import train_run
    from .trainer import load_dataset
    from .tracking import tracking_uri

    t_start = time.perf_counter()
    plan = demo_plan(args.methods, args.all_benchmarks)
    print(f"[demo] 1/3 synthesizing benchmarks (cached after the first run): {', '.join(sorted({b for _, b in plan}))}")
    for bench in sorted({b for _, b in plan}):
        load_dataset(build_run_config(overrides=[f"data.dataset={bench}"]))
    print("[demo] 2/3 pretraining the tiny CLIP on synthetic image-caption pairs (cached after the first run)")
    build_clip("tiny", pretrained="synthetic")
    print(f"[demo] 3/3 training {len(plan)} runs with the tiny preset at {args.epochs_scale:g}x its epochs")
    rows = []
    spent: dict[str, float] = {}
    t_train = time.perf_counter()
    for i, (method, bench) in enumerate(plan):
        if i:
            per_run = (time.perf_counter() - t_train) / i
            eta = per_run * (len(plan) - i)
            print(f"[demo] run {i + 1}/{len(plan)}: {method} on {bench} (ETA {eta / 60:.1f} min)")
        else:
            print(f"[demo] run 1/{len(plan)}: {method} on {bench}")
        cfg = build_run_config(overrides=[f"method={method}", f"data.dataset={bench}", "preset=tiny",
                                          f"seed={args.seed}", f"output_dir={args.output_dir}",
                                          f"optim.epochs_scale={args.epochs_scale}"])
        t_run = time.perf_counter()
        metrics = train_run(cfg)
        spent[method] = spent.get(method, 0.0) + time.perf_counter() - t_run
        for proto in PROTOCOLS[bench]:
            rows.append((method, bench, proto,
                         *(metrics.get(f"test/{proto}/{k}", float("nan")) for k in ("R1", "mAP", "mINP"))))
    print(f"\ntest results, tiny preset at {args.epochs_scale:g}x its epochs, seed {args.seed}:")
    print(format_table(rows))
    print("\nminutes per method: " + ", ".join(f"{m} {t / 60:.1f}" for m, t in spent.items()))
    print(f"\nMLflow: {tracking_uri(cfg)}  (browse with: mlflow ui --backend-store-uri {tracking_uri(cfg)})")
    print(f"[demo] done in {(time.perf_counter() - t_start) / 60:.1f} min")
    return 0


def format_table(rows: list[tuple]) -> str:
    lines = [f"| {'method':12s} | {'benchmark':20s} | {'protocol':12s} | {'R1':>6s} | {'mAP':>6s} | {'mINP':>6s} |",
             f"|{'-' * 14}|{'-' * 22}|{'-' * 14}|{'-' * 8}|{'-' * 8}|{'-' * 8}|"]
    for method, bench, proto, r1, m_ap, minp in rows:
        lines.append(f"| {method:12s} | {bench:20s} | {proto:12s} | {r1:6.1f} | {m_ap:6.1f} | {minp:6.1f} |")
    return "\n".join(lines)
