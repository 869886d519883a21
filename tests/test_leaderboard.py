"""Leaderboard, published numbers and plots, over a real MLflow SQLite store of fake runs
logged with the tracking conventions (tags method/ablation/dataset/seed/sweep, flattened
params, ``test/<protocol>/<metric>`` in percent)."""

from __future__ import annotations

import csv
import re
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from reidbench.cli import main
from reidbench.harness import leaderboard as lb
from reidbench.harness import plots

EXPERIMENT = "sweep-profd-test"
PAPERS_DIR = Path(__file__).resolve().parents[2] / "shared" / "papers"
PAPER_FILES = {"bdam": "000_", "ccaf": "001_", "profd": "002_", "clip_scgi": "003_", "scing": "004_"}

PAPER_PARAMS = {"preset": "paper", "backbone.preset": "vit-b16", "backbone.pretrained": "/models/clip-vit-base-patch16",
                "optim.epochs_scale": "1.0", "data.root": "/data", "params.momentum_g": "0.2", "params.momentum_p": "0.2"}
TINY_PARAMS = {"preset": "tiny", "backbone.preset": "tiny", "backbone.pretrained": "synthetic",
               "optim.epochs_scale": "1.0", "data.root": "None", "params.momentum_g": "0.2", "params.momentum_p": "0.2",
               "params.attention": "sea+spa"}

# profd default on Occluded-Duke, paper setup: three seeds.
PAPER_R1 = [70.0, 71.0, 72.5]
PAPER_MAP = [62.0, 62.5, 63.9]
# the momentum grid (tiny preset, synthetic data): value -> R1 per seed
GRID_R1 = {0.0: [40.0, 42.0], 0.2: [50.0, 51.0], 0.5: [47.0, 46.0], 0.9: [30.0, 33.0]}


def _metrics(protocol: str, r1: float, m_ap: float) -> dict[str, float]:
    return {f"test/{protocol}/R1": r1, f"test/{protocol}/R5": r1 + 10, f"test/{protocol}/R10": r1 + 15,
            f"test/{protocol}/mAP": m_ap, f"test/{protocol}/mINP": m_ap - 20}


def _log(client, exp_id, method, ablation, dataset, seed, params, metrics, status="FINISHED", end_time=None):
    from mlflow.entities import Metric, Param

    tags = {"method": method, "ablation": ablation, "dataset": dataset, "seed": str(seed), "sweep": EXPERIMENT,
            "git_commit": "abc123"}
    run = client.create_run(exp_id, run_name=f"{method}/{ablation}/{dataset}/{seed}", tags=tags)
    rid = run.info.run_id
    full = {"method": method, "seed": str(seed), "data.dataset": dataset, "tracking.ablation": ablation, **params}
    now = int(time.time() * 1000)
    client.log_batch(rid, params=[Param(k, v) for k, v in full.items()],
                     metrics=[Metric(k, v, now, 0) for k, v in metrics.items()] + [Metric("train/loss", 1.0, now, 0)])
    client.set_terminated(rid, status=status, end_time=end_time)
    return rid


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store (creating its schema takes seconds) shared by the tests of this file."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(EXPERIMENT)
    ids = {}
    now = int(time.time() * 1000)
    for seed, (r1, m_ap) in enumerate(zip(PAPER_R1, PAPER_MAP)):
        ids[("paper", seed)] = _log(client, exp_id, "profd", "default", "occluded_duke", seed, PAPER_PARAMS,
                                    _metrics("standard", r1, m_ap), end_time=now + 1000)
    # an older duplicate of seed 0 (ended before the kept one) and a crashed seed: neither counts
    _log(client, exp_id, "profd", "default", "occluded_duke", 0, PAPER_PARAMS, _metrics("standard", 1.0, 1.0),
         end_time=now - 60_000)
    _log(client, exp_id, "profd", "default", "occluded_duke", 3, PAPER_PARAMS, _metrics("standard", 99.0, 99.0),
         status="FAILED")
    # the tiny/synthetic stand-in: the m_g and m_p grids, one factor at a time around (0.2, 0.2)
    for factor in ("momentum_g", "momentum_p"):
        for value, r1s in GRID_R1.items():
            if value == 0.2 and factor == "momentum_p":
                continue  # the centre is one configuration
            ablation = "default" if value == 0.2 else f"{factor}={value}"
            params = {**TINY_PARAMS, f"params.{factor}": str(value)}
            for seed, r1 in enumerate(r1s):
                _log(client, exp_id, "profd", ablation, "synthetic_occluded", seed, params,
                     _metrics("standard", r1 if factor == "momentum_g" else r1 - 5, r1 - 8))
    for seed, r1 in enumerate([45.0, 44.0]):
        _log(client, exp_id, "profd", "no_attention", "synthetic_occluded", seed, {**TINY_PARAMS, "params.attention": "none"},
             _metrics("standard", r1, r1 - 9))
    # LTCC logs its standard protocol as "general"
    ltcc = {**_metrics("general", 76.0, 42.0), **_metrics("cc", 43.5, 21.0)}
    _log(client, exp_id, "ccaf", "default", "ltcc", 0, PAPER_PARAMS, ltcc)
    # a sweep that calls the full model "full"
    _log(client, exp_id, "scing", "full", "occluded_duke", 0, PAPER_PARAMS, _metrics("standard", 71.5, 63.0))
    # random-initialised backbone: labelled, not compared
    _log(client, exp_id, "baseline", "default", "market1501", 0, {**PAPER_PARAMS, "backbone.pretrained": "None"},
         _metrics("standard", 60.0, 40.0))
    # a real adapter reading a folder written by the synthetic generator
    synth = root / "synth" / "occluded" / "Occluded_Duke"
    synth.mkdir(parents=True)
    (synth / "reidbench_meta.jsonl").write_text("{}\n")
    _log(client, exp_id, "clip_reid", "default", "occluded_duke", 0, {**PAPER_PARAMS, "data.root": str(root / "synth")},
         _metrics("standard", 55.0, 45.0))
    return {"uri": uri, "root": root, "ids": ids, "client": client, "exp_id": exp_id}


def _row(board, **key):
    sel = board
    for k, v in key.items():
        sel = sel[sel[k] == v]
    assert len(sel) == 1, f"expected one row for {key}, found {len(sel)}"
    return sel.iloc[0]


# ----------------------------------------------------------------------------- aggregation

def test_aggregates_seeds_exactly_and_skips_unfinished_and_duplicates(store):
    board = lb.leaderboard(EXPERIMENT, store["uri"])
    row = _row(board, method="profd", ablation="default", dataset="occluded_duke", protocol="standard")
    assert row["n_seeds"] == 3 and row["seeds"] == "0,1,2"
    assert row["R1_mean"] == pytest.approx(statistics.mean(PAPER_R1), abs=1e-9)
    assert row["R1_std"] == pytest.approx(statistics.stdev(PAPER_R1), abs=1e-9)
    assert row["mAP_mean"] == pytest.approx(statistics.mean(PAPER_MAP), abs=1e-9)
    assert row["mAP_std"] == pytest.approx(statistics.stdev(PAPER_MAP), abs=1e-9)
    assert row["R5_mean"] == pytest.approx(statistics.mean(PAPER_R1) + 10, abs=1e-9)
    assert row["mINP_mean"] == pytest.approx(statistics.mean(PAPER_MAP) - 20, abs=1e-9)
    assert set(row["run_ids"].split(";")) == {store["ids"][("paper", s)] for s in range(3)}
    assert row["mAP_per_seed"] == " ".join(f"{s}:{v:.2f}" for s, v in enumerate(PAPER_MAP))
    assert row["R1_per_seed"] == " ".join(f"{s}:{v:.2f}" for s, v in enumerate(PAPER_R1))
    loaded = lb.load_runs(EXPERIMENT, store["uri"])
    assert loaded.skipped == {"status FAILED": 1, "older duplicate of a seed": 1}


def test_single_seed_has_no_std(store):
    board = lb.leaderboard(EXPERIMENT, store["uri"])
    row = _row(board, method="ccaf", dataset="ltcc", protocol="cc")
    assert row["n_seeds"] == 1 and np.isnan(row["R1_std"]) and row["R1_mean"] == 43.5


def test_setup_labels_and_never_compares_other_setups(store):
    board = lb.leaderboard(EXPERIMENT, store["uri"])
    synthetic = _row(board, method="profd", ablation="no_attention")
    assert synthetic["setup"] == "tiny/synthetic"
    assert synthetic["paper_dataset"] == "occluded_duke"
    assert synthetic["published_R1"] == 70.1 and synthetic["published_source"] == "ProFD Table 3"
    assert np.isnan(synthetic["diff_R1"]) and np.isnan(synthetic["diff_mAP"])
    random_init = _row(board, method="baseline", dataset="market1501")
    assert random_init["setup"] == "random-init" and np.isnan(random_init["diff_R1"])
    synth_root = _row(board, method="clip_reid", dataset="occluded_duke")
    assert synth_root["setup"] == "synthetic" and np.isnan(synth_root["diff_R1"])
    assert synth_root["published_R1"] == 67.1  # ProFD quotes CLIP-ReID; no home paper, so file order decides


def test_runs_from_different_synthetic_clips_are_never_averaged(store):
    """The tiny CLIP `reidbench pretrain` makes differs across machines: its runs carry the weights'
    fingerprint in the setup, so seeds made from two tiny CLIPs are two rows, not one mean."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store["uri"])
    exp_id = client.create_experiment("two-machines")
    for seed, sha, r1 in ((0, "aaaa1111bbbb2222", 40.0), (1, "aaaa1111bbbb2222", 42.0), (2, "cccc3333dddd4444", 60.0)):
        rid = _log(client, exp_id, "scing", "default", "synthetic_occluded", seed, TINY_PARAMS,
                   _metrics("standard", r1, r1))
        client.set_tag(rid, "backbone.init_sha256", sha)
    _log(client, exp_id, "scing", "no_pdca", "synthetic_occluded", 0, TINY_PARAMS, _metrics("standard", 1.0, 1.0))
    board = lb.leaderboard("two-machines", store["uri"]).set_index(["ablation", "setup"])
    assert board.loc[("default", "tiny/synthetic@aaaa1111"), "n_seeds"] == 2
    assert board.loc[("default", "tiny/synthetic@aaaa1111"), "R1_mean"] == 41.0
    assert board.loc[("default", "tiny/synthetic@cccc3333"), "seeds"] == "2"
    assert ("no_pdca", "tiny/synthetic") in board.index  # logged before the tag existed: no suffix
    # weights loaded from a user's directory are the same files everywhere: no suffix
    assert lb.setup_label(PAPER_PARAMS, "occluded_duke", "aaaa1111bbbb2222") == "paper"


def test_published_join_and_difference_for_paper_setup(store):
    board = lb.leaderboard(EXPERIMENT, store["uri"])
    row = _row(board, method="profd", ablation="default", dataset="occluded_duke")
    assert row["setup"] == "paper"
    # the method's own paper wins over SCING's quote of ProFD (70.6 / 63.1)
    assert row["published_source"] == "ProFD Table 1"
    assert row["published_R1"] == 70.8 and row["published_mAP"] == 62.8
    assert row["diff_R1"] == pytest.approx(statistics.mean(PAPER_R1) - 70.8, abs=1e-9)
    assert row["diff_mAP"] == pytest.approx(statistics.mean(PAPER_MAP) - 62.8, abs=1e-9)
    assert np.isnan(row["published_R5"]) and np.isnan(row["diff_R5"])
    general = _row(board, method="ccaf", dataset="ltcc", protocol="general")
    assert general["paper_protocol"] == "standard" and general["published_R1"] == 75.3
    assert general["diff_R1"] == pytest.approx(76.0 - 75.3)
    full = _row(board, method="scing", ablation="full")
    assert full["paper_ablation"] == "default" and full["published_source"] == "SCING Table 2"
    assert full["diff_R1"] == pytest.approx(71.5 - 71.1)
    cc = _row(board, method="ccaf", dataset="ltcc", protocol="cc")
    assert cc["published_R1"] == 42.9 and cc["diff_mAP"] == pytest.approx(21.0 - 20.1)


def test_unknown_experiment_names_the_existing_ones(store):
    with pytest.raises(LookupError, match=EXPERIMENT):
        lb.load_runs("no-such-sweep", store["uri"])


# ----------------------------------------------------------------------------- files

def test_write_leaderboard_csv_and_markdown(store, tmp_path):
    board = lb.leaderboard(EXPERIMENT, store["uri"])
    paths = lb.write_leaderboard(board, tmp_path, EXPERIMENT)
    back = pd.read_csv(paths["csv"])
    assert len(back) == len(board)
    assert list(back.columns) == list(board.columns)
    row = back[(back["method"] == "profd") & (back["ablation"] == "default") & (back["dataset"] == "occluded_duke")].iloc[0]
    assert row["R1_mean"] == pytest.approx(statistics.mean(PAPER_R1), abs=1e-4)
    md = paths["markdown"].read_text()
    all_rows = md[md.index("## All reproduced rows"):md.index("## As in the papers' tables")]
    profd_row = next(ln for ln in all_rows.splitlines() if ln.startswith("| profd | default | occluded_duke |"))
    assert " ".join(f"{s}:{v:.2f}" for s, v in enumerate(PAPER_MAP)) in profd_row  # the seeds behind mean ± std
    # ProFD Table 3 in the paper's shape: every row of the table, ours beside the paper's
    section = md[md.index("### ProFD Table 3"):]
    section = section[:section.find("\n### ", 5) if "\n### " in section[5:] else None]
    lines = [ln for ln in section.splitlines() if ln.startswith("| ")]
    by_ablation = {ln.split(" | ")[2]: ln for ln in lines[1:]}
    assert set(by_ablation) == {"no_attention", "sea_only", "spa_only", "default"}
    assert "tiny/synthetic" in by_ablation["no_attention"]
    assert "44.50 ± 0.71 · paper 70.1" in by_ablation["no_attention"] and "Δ" not in by_ablation["no_attention"]
    assert "— · paper 70.3" in by_ablation["sea_only"]
    # Table 1: the paper-setup row is compared
    table1 = md[md.index("### ProFD Table 1"):md.index("### ProFD Table 3")]
    paper_row = next(ln for ln in table1.splitlines() if "| profd | default | paper |" in ln)
    assert f"Δ {statistics.mean(PAPER_R1) - 70.8:+.2f}" in paper_row
    # tables no run belongs to stay out
    assert "### BDAM" not in md and "### CCAF Table 2" not in md
    assert "### CLIP-SCGI Table 1" in md  # its baseline row (ViT) matches the baseline run on market1501


def test_cli_writes_tables_and_plots_and_logs_them(store, tmp_path, capsys):
    target = _log(store["client"], store["exp_id"], "summary", "none", "none", 0, {}, {}, status="FINISHED")
    out = tmp_path / "board"
    code = main(["leaderboard", "--experiment", EXPERIMENT, "--out", str(out), "--tracking-uri", store["uri"],
                 "--log-to-run", target])
    assert code == 0
    assert (out / "leaderboard.csv").exists() and (out / "leaderboard.md").exists()
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert any(n.startswith("sensitivity_profd_synthetic_occluded_standard") and "momentum_g" in n for n in pngs)
    assert any(n.startswith("sensitivity_profd_synthetic_occluded_standard") and "momentum_p" in n for n in pngs)
    assert "cmc_occluded_duke_standard_paper.png" in pngs
    logged = {a.path for a in store["client"].list_artifacts(target, "leaderboard")}
    assert {"leaderboard/leaderboard.csv", "leaderboard/leaderboard.md", "leaderboard/plots"} <= logged
    assert "skipped 1 run(s): status FAILED" in capsys.readouterr().err


def test_cli_unknown_experiment_exits_2(store, tmp_path, capsys):
    assert main(["leaderboard", "--experiment", "nope", "--out", str(tmp_path), "--tracking-uri", store["uri"]]) == 2
    assert "no MLflow experiment named 'nope'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- plots

def _assert_real_png(path: Path) -> None:
    assert path.exists() and path.stat().st_size > 10_000
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width >= 500 and im.height >= 300
        pixels = np.asarray(im.convert("L"), dtype=float)
    assert pixels.std() > 5  # not a blank canvas
    assert (pixels < 128).mean() > 0.002  # has lines and text


def test_sensitivity_table_is_one_factor_at_a_time(store, tmp_path):
    runs = lb.load_runs(EXPERIMENT, store["uri"]).runs
    tiny = runs[(runs["setup"] == "tiny/synthetic") & (runs["method"] == "profd")]
    assert plots.swept_params(tiny) == ["params.params.momentum_g", "params.params.momentum_p"]
    subset = plots.one_factor_runs(tiny, "params.params.momentum_g")
    table = plots.sensitivity_table(subset, "params.params.momentum_g", "standard")
    assert list(table["value"]) == [0.0, 0.2, 0.5, 0.9]
    assert list(table["n"]) == [2, 2, 2, 2]  # no_attention (same momenta, another switch) is held out
    for value, r1s in GRID_R1.items():
        got = table[table["value"] == value].iloc[0]
        assert got["R1_mean"] == pytest.approx(statistics.mean(r1s))
        assert got["R1_std"] == pytest.approx(statistics.stdev(r1s))
    path = plots.plot_sensitivity(subset, "params.params.momentum_g", tmp_path / "mg.png", "standard", title="m_g")
    _assert_real_png(path)


def test_cmc_plot_logged_to_run(store, tmp_path):
    run_id = store["ids"][("paper", 1)]
    curve = np.minimum(1.0, 0.7 + 0.3 * (1 - np.exp(-np.arange(50) / 8)))
    path = plots.plot_cmc({"profd/default": curve, "points": {1: 0.5, 5: 0.7, 10: 0.8}}, tmp_path / "cmc.png",
                          "CMC", run_id=run_id, tracking_uri=store["uri"])
    _assert_real_png(path)
    assert "plots/cmc.png" in {a.path for a in store["client"].list_artifacts(run_id, "plots")}


def test_sensitivity_unknown_param_names_the_logged_ones(store):
    runs = lb.load_runs(EXPERIMENT, store["uri"]).runs
    with pytest.raises(KeyError, match="params.params.momentum_g"):
        plots.sensitivity_table(runs, "params.lambda", "standard")


# ----------------------------------------------------------------------------- published numbers

REGISTERED_METHODS = {"clip_reid", "baseline", "profd", "scing", "clip_scgi", "ccaf", "bdam"}


def test_published_file_is_well_formed():
    from reidbench.datasets import list_datasets

    pub = lb.load_published()
    assert set(pub["paper"]) == set(lb.PAPERS)
    assert set(pub["method"]) <= REGISTERED_METHODS
    assert set(pub["dataset"]) <= set(list_datasets()) | {"occluded_market"}
    assert set(pub["protocol"]) <= {"standard", "cc", "same_clothes", "t2i"}
    assert not pub.duplicated(["method", "ablation", "dataset", "protocol", "metric", "paper", "table"]).any()
    valued = pub["value"].notna()
    assert pub.loc[valued, "value"].between(0, 100).all()
    assert (pub.loc[~valued, "note"] != "").all(), "a row without a value must say why"
    assert all(re.fullmatch(r"[a-z0-9_]+", a) for a in pub["ablation"])
    assert set(lb.TABLE_CAPTIONS) == set(zip(pub["paper"], pub["table"]))


def test_published_spot_checks_against_the_papers_tables():
    pub = lb.load_published()

    def value(paper, table, method, ablation, dataset, protocol, metric):
        hit = pub[(pub["paper"] == paper) & (pub["table"] == table) & (pub["method"] == method) & (pub["ablation"] == ablation)
                  & (pub["dataset"] == dataset) & (pub["protocol"] == protocol) & (pub["metric"] == metric)]
        assert len(hit) == 1
        return hit["value_text"].iloc[0]

    # column order traps: CLIP-SCGI prints mAP before top-1, MSMT17 first; BDAM's ablations print mAP first
    assert value("clip_scgi", "Table 1", "clip_scgi", "default", "msmt17", "standard", "mAP") == "88.2"
    assert value("clip_scgi", "Table 1", "clip_scgi", "default", "msmt17", "standard", "R1") == "92.9"
    assert value("clip_scgi", "Table 1", "baseline", "rn50", "market1501", "standard", "R1") == "94.7"
    assert value("bdam", "Table 2", "bdam", "baseline", "cuhk_pedes", "t2i", "mAP") == "59.81"
    assert value("bdam", "Table 1", "bdam", "default", "rstpreid", "t2i", "R10") == "92.95"
    assert value("ccaf", "Table 1", "ccaf", "default", "prcc", "same_clothes", "R1") == "99.9"
    assert value("ccaf", "Table 1", "ccaf", "default", "vc_clothes", "cc", "mAP") == "87.2"
    assert value("ccaf", "Table 2", "ccaf", "default", "deepchange", "standard", "mAP") == "21.0"
    assert value("scing", "Table 3", "scing", "metanet", "occluded_duke", "standard", "mAP") == "58.0"
    assert value("profd", "Table 1", "profd", "stride12", "p_dukemtmc", "standard", "mAP") == "84.7"


@pytest.mark.skipif(not PAPERS_DIR.is_dir(), reason="the papers' text copies (shared/papers) are not beside the repo")
def test_every_published_value_is_printed_in_its_paper():
    pub = lb.load_published()
    texts = {p: next(PAPERS_DIR.glob(f"{prefix}*.txt")).read_text() for p, prefix in PAPER_FILES.items()}
    for row in pub[pub["value_text"] != ""].itertuples():
        pattern = r"(?<![\d.])" + re.escape(row.value_text) + r"(?!\d)"
        assert re.search(pattern, texts[row.paper]), f"{row.value_text} ({row.paper} {row.table}, {row.row}) not in the paper"


def test_published_ablations_lists_a_methods_rows():
    abl = lb.published_ablations("profd")
    table3 = abl[abl["table"] == "Table 3"]
    assert list(table3["ablation"]) == ["no_attention", "sea_only", "spa_only", "default"]
    assert set(abl[abl["paper"] == "scing"]["ablation"]) == {"default"}


def test_published_csv_has_no_stray_whitespace():
    with open(lb.published_path(), newline="") as f:
        for row in csv.reader(f):
            assert all(cell == cell.strip() for cell in row), row


def test_a_results_csv_starts_with_the_command_that_wrote_it(tmp_path, monkeypatch):
    import sys

    from reidbench.harness.results import write_results_csv

    monkeypatch.setattr(sys, "argv", ["/somewhere/repo/scripts/clothes_probe.py", "runs/a b", "--out", "x.csv"])
    path = write_results_csv(pd.DataFrame({"method": ["ccaf"], "mAP": [1.5]}), tmp_path / "r" / "x.csv")
    first = path.read_text().splitlines()[0]
    assert first == "# command: python scripts/clothes_probe.py 'runs/a b' --out x.csv"
    assert pd.read_csv(path, comment="#").to_dict("list") == {"method": ["ccaf"], "mAP": [1.5]}
