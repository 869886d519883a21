"""Clothes leakage probe: how much of the outfit a trained image method's test features still
encode, beyond the identity (issue 17's check for a cloth-changing method).

    python scripts/clothes_probe.py runs/ccaf/default/synthetic_cc/0/<hash> runs/clip_reid/... \
        --out results/clothes_probe_synthetic_cc.csv

Each argument is a trained run folder (or checkpoint) of an image method on a benchmark whose
test images carry clothes ids (``synthetic_cc``, PRCC, LTCC, ...). The run's test images (its
query and gallery splits, each image once) are embedded as the run's own evaluation embeds
them (test-time pixels, the method's ``embed``), L2-normalised, and a linear probe
(scikit-learn's ``LogisticRegression``) is fitted on them by stratified 5-fold
cross-validation to predict the clothes id. What it reports, per run:

* ``outfit_acc``: the probe's accuracy among the **outfits of the image's own identity** (its
  scores restricted to those clothes ids). The identity is given, so this is the clothing
  information beyond the identity: what a cloth-changing method should drop. Only
  identities seen in two or more outfits count.
* ``outfit_chance``: the same figure for a guess uniform over the identity's outfits, and
  ``outfit_majority`` for always guessing the identity's most photographed outfit (what a
  probe that found no clothing information falls back to).
* ``clothes_acc``: the plain clothes-id accuracy (identity and clothes together).
* ``same_minus_changed``: mean cosine similarity between two images of one identity in the
  same outfit minus that in different outfits: the part of a match the clothes make; and
  ``changed_minus_other``: that in different outfits minus two images of different
  identities: what is left to find the person by (near 0 for features that collapsed).

Lower ``outfit_acc`` and ``same_minus_changed`` mean less clothes leakage. Decided here:
an outfit is an (identity, clothes id) pair, since PRCC-style adapters number clothes per
identity (``synthetic_cc``: 0 for the gallery and same-clothes query, 1 for the changed
one); an outfit needs at least 4 images to be a class (4 stratified folds), rarer ones are
left out and counted in ``images_left_out``. In PRCC-style data the changed outfit is
also the third camera's, so the probe sees outfit and camera together; the retrieval gap
(same-clothes minus cloth-changing mAP) is the other side of the same question.
"""

from __future__ import annotations

import argparse
import sys

FOLDS = 4


def leakage(features, pids, clothes, seed: int = 0) -> dict[str, float]:
    """The probe's figures (see the module docstring) for L2-normalised ``features`` (N x D)
    with identity ``pids`` and ``clothes`` ids (numpy arrays; an outfit is a (pid, clothes) pair)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    clothes = np.unique(np.stack([pids, clothes], axis=1), axis=0, return_inverse=True)[1].reshape(-1)
    ids, counts = np.unique(clothes, return_counts=True)
    keep = np.isin(clothes, ids[counts >= FOLDS])
    x, p, c = features[keep], pids[keep], clothes[keep]
    outfits = {pid: np.unique(c[p == pid]) for pid in np.unique(p)}
    multi = np.array([len(outfits[pid]) >= 2 for pid in p])
    if not multi.any():
        raise ValueError(f"clothes_probe: no identity has two outfits with {FOLDS}+ test images each; the benchmark's test "
                         "split does not change clothes")
    hit_any, hit_own = np.zeros(len(c), bool), np.zeros(len(c), bool)
    for train, test in StratifiedKFold(FOLDS, shuffle=True, random_state=seed).split(x, c):
        probe = LogisticRegression(max_iter=2000, C=1.0).fit(x[train], c[train])
        scores = probe.decision_function(x[test])
        hit_any[test] = probe.classes_[scores.argmax(1)] == c[test]
        for row, i in enumerate(test):
            own = np.isin(probe.classes_, outfits[p[i]])
            hit_own[i] = probe.classes_[np.where(own, scores[row], -np.inf).argmax()] == c[i]
    sim = x @ x.T
    same_id = (p[:, None] == p[None, :]) & ~np.eye(len(p), dtype=bool)
    same_clothes = c[:, None] == c[None, :]
    majority = {pid: max(np.count_nonzero(c == o) for o in outfits[pid]) / np.count_nonzero(p == pid) for pid in outfits}
    return {
        "outfit_acc": float(hit_own[multi].mean()),
        "outfit_chance": float(np.mean([1.0 / len(outfits[pid]) for pid in p[multi]])),
        "outfit_majority": float(np.mean([majority[pid] for pid in p[multi]])),
        "clothes_acc": float(hit_any.mean()),
        "clothes_chance": float(1.0 / len(np.unique(c))),
        "same_minus_changed": float(sim[same_id & same_clothes].mean() - sim[same_id & ~same_clothes].mean()),
        "changed_minus_other": float(sim[same_id & ~same_clothes].mean() - sim[p[:, None] != p[None, :]].mean()),
        "images": int(keep.sum()),
        "images_left_out": int((~keep).sum()),
        "identities_multi_outfit": int(len({pid for pid in p[multi]})),
    }


def run_features(run: str, untrained: bool = False):
    """(features, pids, clothes ids, run config) of a trained run's test images; with
    ``untrained``, of the same model before training (the backbone's own features)."""
    import numpy as np
    import torch

    from reidbench.datasets.loader import build_eval_loader
    from reidbench.harness.evaluation_command import load_trained_run
    from reidbench.harness.trainer import embed, eval_pixels, local_device

    cfg, prep = load_trained_run(run)
    if untrained:
        from reidbench.harness.trainer import prepare

        prep = prepare(cfg)
    if "image" not in type(prep.method).tasks:
        raise ValueError(f"{run}: method {cfg.method} is not an image ReID method")
    samples, seen = [], set()
    for ev in prep.dataset.evaluations:
        for split in (ev.query, ev.gallery):
            for s in prep.dataset.splits[split]:
                if s.path not in seen:
                    seen.add(s.path)
                    samples.append(s)
    if any(s.clothes_id is None for s in samples):
        raise ValueError(f"{run}: the test images of {cfg.data.dataset} carry no clothes ids")
    device = local_device(None)
    method = prep.method.to(device)
    feats = embed(method, build_eval_loader(samples, prep.image_size, cfg.data.eval_batch_size,
                                            text_kinds=method.eval_text_kinds(), **eval_pixels(cfg, method)), device)
    feats = torch.nn.functional.normalize(torch.as_tensor(feats).float(), dim=1).numpy()
    return feats, np.array([s.pid for s in samples]), np.array([s.clothes_id for s in samples]), cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="trained run folders or checkpoints")
    parser.add_argument("--out", default=None, help="CSV to write (first line: the command)")
    parser.add_argument("--untrained", action="store_true",
                        help="also probe the first run's model before training (ablation 'untrained')")
    args = parser.parse_args(argv)

    import pandas as pd

    rows = []
    for i, run in enumerate(args.runs):
        for untrained in (False, True) if args.untrained and i == 0 else (False,):
            feats, pids, clothes, cfg = run_features(run, untrained)
            figures = leakage(feats, pids, clothes, seed=cfg.seed)
            rows.append({"run": run, "method": cfg.method, "ablation": "untrained" if untrained else cfg.tracking.ablation,
                         "dataset": cfg.data.dataset, "seed": cfg.seed,
                         **{k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}})
    table = pd.DataFrame(rows)
    print(table.drop(columns="run").to_string(index=False))
    means = table.groupby(["method", "ablation"])[["outfit_acc", "outfit_majority", "same_minus_changed",
                                                   "changed_minus_other"]].agg(["mean", "std"])
    print(means.round(4).to_string())
    if args.out:
        from reidbench.harness.results import write_results_csv

        print(f"wrote {write_results_csv(table, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
