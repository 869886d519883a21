"""Occlusion robustness (issue 20): test metrics over query subsets binned by the visible body
fraction the synthetic generator records, logged with the test metrics, shown by the leaderboard."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from reidbench.datasets import Sample
from reidbench.datasets.records import EvalSplit
from reidbench.harness.evaluate import rank_metrics_from_features, sample_visibility, visibility_curve
from reidbench.harness.trainer import robustness_results

VISIBLE = [0.62, 0.65, 0.7, 0.74, 0.8, 0.83, 0.88, 0.91]


def scene(tmp_path):
    """Eight queries (pid i, camera 0) against a gallery of their matches (camera 1) and 8
    distractors; the less visible a query, the further its match: AP falls with occlusion."""
    rng = np.random.default_rng(0)
    dim = 32
    gallery = rng.normal(size=(16, dim))
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    noise = rng.normal(size=(8, dim))
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    query = np.stack([(v - 0.6) * gallery[i] + (1 - v) * noise[i] for i, v in enumerate(VISIBLE)])
    folder = tmp_path / "occluded" / "Occluded_Duke"
    (folder / "query").mkdir(parents=True)
    lines, samples = [], []
    for i, v in enumerate(VISIBLE):
        rel = f"query/{i + 1:04d}_c1_f{i:07d}.jpg"
        lines.append(json.dumps({"path": rel, "pid": i + 1, "attributes": {"visible_fraction": v}}))
        samples.append(Sample(str(folder / rel), i + 1, 0))
    (folder / "reidbench_meta.jsonl").write_text("\n".join(lines) + "\n")
    result = rank_metrics_from_features(query, gallery, list(range(1, 9)), [*range(1, 9), *range(100, 108)],
                                        [0] * 8, [1] * 16)
    return samples, result, tmp_path / "occluded"


def test_visible_fractions_come_from_the_generators_meta_file(tmp_path):
    samples, _, root = scene(tmp_path)
    assert sample_visibility(samples, str(root)).tolist() == VISIBLE
    assert sample_visibility(samples, str(tmp_path / "elsewhere")) is None  # real data: no record
    stranger = Sample(str(tmp_path / "x.jpg"), 1, 0)
    assert sample_visibility([*samples, stranger], str(root)) is None


def test_curve_bins_queries_by_visibility_and_averages_their_ap(tmp_path):
    _, result, _ = scene(tmp_path)
    curve = visibility_curve(result, np.array(VISIBLE), bins=4)
    assert [(c["from"], c["to"], c["queries"]) for c in curve] == [(0.62, 0.65, 2), (0.7, 0.74, 2), (0.8, 0.83, 2),
                                                                    (0.88, 0.91, 2)]
    expected = [100 * float(np.mean(result.query_ap[i:i + 2])) for i in (0, 2, 4, 6)]
    assert [c["mAP"] for c in curve] == pytest.approx(expected)
    assert curve[0]["mAP"] < curve[-1]["mAP"]  # the scene degrades with occlusion
    assert np.mean([c["mAP"] for c in curve]) == pytest.approx(100 * result.mAP)  # equal-count bins
    with pytest.raises(ValueError, match="7 visible fractions for 8 queries"):
        visibility_curve(result, np.array(VISIBLE[:7]))


def test_run_logs_the_curve_with_its_test_metrics(tmp_path):
    samples, result, root = scene(tmp_path)
    dataset = SimpleNamespace(root=str(root), splits={"query": samples, "gallery": []},
                              evaluations=[EvalSplit("standard", "query", "gallery", "standard")])
    prep = SimpleNamespace(dataset=dataset)
    logged = robustness_results(prep, {"standard": result}, bins=2)
    assert logged["test/standard/visibility/bin0/queries"] == 4
    assert logged["test/standard/visibility/bin0/from"] == 0.62 and logged["test/standard/visibility/bin1/to"] == 0.91
    assert logged["test/standard/visibility/bin0/mAP"] < logged["test/standard/visibility/bin1/mAP"]
    assert robustness_results(prep, {"standard": result}, bins=0) == {}
    # a benchmark whose queries are all unoccluded (synthetic_cc) gets no curve of one value
    meta = root / "Occluded_Duke" / "reidbench_meta.jsonl"
    meta.write_text("\n".join(json.dumps({**json.loads(ln), "attributes": {"visible_fraction": 1.0}})
                              for ln in meta.read_text().splitlines()) + "\n")
    assert robustness_results(prep, {"standard": result}, bins=2) == {}


def test_leaderboard_shows_the_curve_per_method_over_seeds(tmp_path):
    import pandas as pd

    from reidbench.harness.leaderboard import robustness_table, write_robustness

    rows = []
    for method, maps in (("profd", [[20.0, 40.0], [22.0, 44.0]]), ("clip_reid", [[10.0, 40.0], [14.0, 42.0]])):
        for seed, (low, high) in enumerate(maps):
            row = {"method": method, "ablation": "default", "dataset": "synthetic_occluded", "setup": "tiny/synthetic",
                   "seed": str(seed), "metrics.test/standard/mAP": (low + high) / 2}
            for b, (value, lo, hi) in enumerate(((low, 0.6, 0.75), (high, 0.76, 0.9))):
                prefix = f"metrics.test/standard/visibility/bin{b}/"
                row.update({prefix + "mAP": value, prefix + "R1": value + 5, prefix + "from": lo, prefix + "to": hi,
                            prefix + "visible_mean": (lo + hi) / 2, prefix + "queries": 30.0})
            rows.append(row)
    runs = pd.DataFrame(rows)
    table = robustness_table(runs)
    profd_low = table[(table["method"] == "profd") & (table["bin"] == 0)].iloc[0]
    assert (profd_low["n_seeds"], profd_low["mAP_mean"]) == (2, 21.0)
    assert profd_low["mAP_std"] == pytest.approx(np.std([20.0, 22.0], ddof=1))
    markdown = tmp_path / "leaderboard.md"
    markdown.write_text("# Leaderboard\n")
    paths = write_robustness(runs, tmp_path, markdown=markdown)
    text = markdown.read_text()
    assert "## Occlusion robustness" in text and "visible 0.60-0.75" in text
    assert "| profd | default | 2 | 21.00 ± 1.41 | 42.00 ± 2.83 |" in text
    assert paths["robustness"].exists() and paths["robustness_plot_0"].suffix == ".png"
    assert write_robustness(runs.drop(columns=[c for c in runs if "/visibility/" in c]), tmp_path / "none") == {}
    # curves logged where every query was fully visible (bins 1.00-1.00) are left out
    flat = runs.assign(dataset="synthetic_cc", **{c: 1.0 for c in runs if c.endswith(("/from", "/to"))})
    assert set(robustness_table(pd.concat([runs, flat]))["dataset"]) == {"synthetic_occluded"}


def test_a_run_on_the_synthetic_occluded_benchmark_logs_its_curve_and_says_how_it_selects(tmp_path, capsys):
    from reidbench.datasets.synthetic import synthesize
    from reidbench.harness.run_config import build_run_config
    from reidbench.harness.trainer import WorkerEnv, fit

    root = synthesize(tmp_path / "synth", flavor="occluded", ids=8, seed=0, workers=1)["occluded"]
    cfg = build_run_config(overrides=[
        "method=baseline", "data.dataset=occluded_duke", f"data.root={root}", "data.p=4", "data.k=2",
        "data.num_workers=0", "data.val_fraction=0", "backbone.pretrained=null", "optim.epochs_scale=0.05",
        f"output_dir={tmp_path / 'runs'}", "evaluation.visibility_bins=2"])
    metrics = fit(cfg, WorkerEnv())
    bins = {k: v for k, v in metrics.items() if "/visibility/" in k}
    assert {"test/standard/visibility/bin0/mAP", "test/standard/visibility/bin1/mAP"} <= set(bins)
    assert bins["test/standard/visibility/bin0/to"] <= bins["test/standard/visibility/bin1/from"]
    assert bins["test/standard/visibility/bin1/to"] < 1.0  # every Occluded-Duke query is occluded
    assert "model selection: none, the last epoch is kept" in capsys.readouterr().err
