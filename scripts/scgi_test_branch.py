"""How CLIP-SCGI's test-time branch is formed, measured on trained runs: what the full model
(CGI + CFF) scores when the caption embedding ``t`` of Eq. 3 comes from different places.

    python scripts/scgi_test_branch.py RUN_DIR [RUN_DIR ...] --out results/scgi_test_branch.csv

Each argument is a trained ``clip_scgi`` run folder (or checkpoint). The paper reads no
caption at test time; how the caption-guided branch is then formed it leaves open. Rows:

* ``inversion`` (``test_branch="inversion"``, the default until this measurement): ``t`` =
  the embedding of "a photo of a person" (``test_caption``);
* ``plain_prompt`` (``test_branch="plain_prompt"``, the default): no S*, CFF reads "a photo of
  a person";
* ``mean_caption``: ``t`` = the mean embedding of the training split's captions, the
  expected ``t`` of training, computed once (no test caption is read);
* ``own_caption`` (an oracle, not a deployment): each test image's own caption, as in
  training; how much the train/test difference in ``t`` costs.

Scored on every test protocol of the run's dataset. Writes one row per (run, branch).
"""

from __future__ import annotations

import argparse
import sys

import torch

METRICS = ("R1", "R5", "R10", "mAP", "mINP")
BRANCHES = ("inversion", "plain_prompt", "mean_caption", "own_caption")


def training_caption_mean(method, samples, batch_size: int = 256) -> torch.Tensor:
    """The mean projected text embedding of every caption variant of the training split."""
    captions = [text for s in samples for text in s.texts_of("caption")]
    if not captions:
        raise ValueError("the training split has no captions")
    with torch.no_grad():
        parts = [method.encode_sentences(captions[i:i + batch_size]) for i in range(0, len(captions), batch_size)]
    return torch.cat(parts).mean(dim=0)


def with_branch(method, branch: str, mean: torch.Tensor):
    """Set ``method`` up to embed test images with ``branch`` (a BRANCHES name)."""
    from dataclasses import replace

    cls = type(method)
    method.config = replace(method.config, test_branch="plain_prompt" if branch == "plain_prompt" else "inversion")
    method.eval_text_kinds = (lambda: ("caption",)) if branch == "own_caption" else (lambda: ())

    def caption_embeddings(batch: dict, training: bool) -> torch.Tensor:
        n = batch["image"].shape[0]
        if branch == "mean_caption":
            return mean.to(batch["image"].device).expand(n, -1)
        if branch == "own_caption":
            return method.encode_sentences(list(batch["caption"]))
        return cls.caption_embeddings(method, batch, training)

    method.caption_embeddings = caption_embeddings
    return method


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="trained clip_scgi run folders or checkpoints")
    parser.add_argument("--out", default=None, help="CSV to write (first line: the command)")
    args = parser.parse_args(argv)

    import pandas as pd

    from reidbench.harness.evaluation_command import load_trained_run
    from reidbench.harness.results import report
    from reidbench.harness.trainer import evaluate_test, local_device, summarize_results

    rows = []
    for run in args.runs:
        cfg, prep = load_trained_run(run)
        if cfg.method != "clip_scgi":
            raise ValueError(f"{run}: a {cfg.method} run; this script reads clip_scgi runs")
        device = local_device(None)
        method = prep.method.to(device).eval()
        mean = training_caption_mean(method, prep.dataset.splits["train"])
        for branch in BRANCHES:
            with torch.no_grad():
                metrics = summarize_results(evaluate_test(with_branch(method, branch, mean), prep, cfg, device))
            for ev in prep.dataset.evaluations:
                rows.append({"run": run, "ablation": cfg.tracking.ablation, "dataset": cfg.data.dataset,
                             "seed": cfg.seed, "protocol": ev.name, "branch": branch,
                             **{m: round(metrics[f"test/{ev.name}/{m}"], 2) for m in METRICS}})
    report(pd.DataFrame(rows), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
