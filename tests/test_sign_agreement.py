"""Sign agreement of reproduced ablations with the papers' (issue 20), over a real MLflow
SQLite store of fake runs logged with the tracking conventions."""

from __future__ import annotations

import math
import time

import pandas as pd
import pytest

from reidbench.cli import main
from reidbench.harness import leaderboard as lb

EXPERIMENT = "ablation-signs-test"
TINY = {"preset": "tiny", "backbone.preset": "tiny", "backbone.pretrained": "synthetic", "optim.epochs_scale": "1.0",
        "data.root": "None"}
# SCING Table 3 on Occluded-Duke, mAP per seed (tiny preset, synthetic_occluded). The paper: every
# row below the full model (63.4): baseline 59.1, metanet 58.0, no_pdca 62.1.
SCING_MAP = {"default": [30.0, 31.0, 32.0],
             "no_pdca": [28.0, 29.2, 29.8],  # -2.0 +- 0.12: agrees beyond noise
             "metanet": [31.0, 32.5, 33.1],  # +1.2: disagrees
             "baseline": [31.0, 29.5, 31.7]}  # -0.27 +- 0.76: agrees within noise
PROFD_MAP = {"default": [33.0, 32.0, 31.0], "no_memory": [34.0, 33.0, 32.5], "m_g=0.5": [32.0, 31.5, 30.0],
             "m_g=0.2": [33.0, 32.0, 31.0]}


def _log(client, exp_id, method, ablation, seed, m_ap, params=TINY, dataset="synthetic_occluded"):
    from mlflow.entities import Metric, Param

    tags = {"method": method, "ablation": ablation, "dataset": dataset, "seed": str(seed), "sweep": EXPERIMENT}
    rid = client.create_run(exp_id, run_name=f"{method}/{ablation}/{dataset}/{seed}", tags=tags).info.run_id
    now = int(time.time() * 1000)
    metrics = {"test/standard/mAP": m_ap, "test/standard/R1": m_ap + 10}
    client.log_batch(rid, params=[Param(k, v) for k, v in {"method": method, **params}.items()],
                     metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])
    client.set_terminated(rid, status="FINISHED")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(EXPERIMENT)
    for method, table in (("scing", SCING_MAP), ("profd", PROFD_MAP)):
        for ablation, values in table.items():
            for seed, value in enumerate(values):
                _log(client, exp_id, method, ablation, seed, value)
    _log(client, exp_id, "scing", "no_pdca", 3, 10.0)  # a seed the full model lacks: not paired
    return uri


@pytest.fixture(scope="module")
def signs(store):
    return lb.sign_agreement(lb.load_runs(EXPERIMENT, store).runs)


def test_each_ablation_row_is_compared_with_the_full_model_seed_by_seed(signs):
    scing = signs[(signs["paper"] == "scing") & (signs["table"] == "Table 3") & (signs["metric"] == "mAP")]
    by = scing.set_index("ablation")
    assert set(by.index) == {"no_pdca", "metanet", "baseline"}
    no_pdca = by.loc["no_pdca"]
    diffs = [r - f for r, f in zip(SCING_MAP["no_pdca"], SCING_MAP["default"])]
    assert no_pdca["n_pairs"] == 3 and no_pdca["seeds"] == "0,1,2"
    assert no_pdca["diff_mean"] == pytest.approx(sum(diffs) / 3)
    assert no_pdca["diff_se"] == pytest.approx(pd.Series(diffs).std() / math.sqrt(3))
    assert no_pdca["published_diff"] == pytest.approx(62.1 - 63.4)
    assert (no_pdca["same_sign"], no_pdca["beyond_noise"], no_pdca["verdict"]) == (True, True, "agrees")
    assert (by.loc["metanet", "same_sign"], by.loc["metanet", "verdict"]) == (False, "disagrees")
    assert (by.loc["baseline", "same_sign"], by.loc["baseline", "verdict"]) == (True, "agrees (within noise)")
    assert set(scing["setup"]) == {"tiny/synthetic"} and set(scing["dataset"]) == {"occluded_duke"}


def test_rows_the_text_copy_lost_take_the_direction_the_text_states(signs):
    profd = signs[(signs["paper"] == "profd") & (signs["metric"] == "mAP")].set_index("ablation")
    assert set(profd.index) == {"no_memory", "m_g=0.5"}  # m_g=0.2 is the full model itself
    assert (profd.loc["no_memory", "table"], profd.loc["no_memory", "paper_sign"]) == ("Table 4", -1)
    assert math.isnan(profd.loc["no_memory", "published_diff"])
    assert profd.loc["no_memory", "verdict"] == "disagrees"
    assert profd.loc["m_g=0.5", "table"] == "Fig. 4" and bool(profd.loc["m_g=0.5", "same_sign"])


def test_share_of_agreeing_rows_per_table_and_overall(signs):
    summary = lb.agreement_summary(signs)
    scing = summary[(summary["table"] == "Table 3") & (summary["metric"] == "mAP")].iloc[0]
    assert (scing["rows"], scing["same_sign"], scing["agrees_beyond_noise"]) == (3, pytest.approx(2 / 3),
                                                                                 pytest.approx(1 / 3))
    # SCING's Table 2 also compares ProFD with SCING: our profd and scing defaults pair up too
    table2 = summary[(summary["table"] == "Table 2") & (summary["metric"] == "mAP")].iloc[0]
    assert (table2["paper"], table2["rows"], table2["same_sign"]) == ("scing", 1, 0.0)
    overall = summary[(summary["paper"] == "all") & (summary["metric"] == "mAP")].iloc[0]
    assert (overall["rows"], overall["same_sign"], overall["agrees_beyond_noise"]) == (
        6, pytest.approx(3 / 6), pytest.approx(2 / 6))


def test_leaderboard_command_prints_the_share_and_writes_the_section(store, tmp_path, capsys):
    out = tmp_path / "board"
    assert main(["leaderboard", "--experiment", EXPERIMENT, "--out", str(out), "--tracking-uri", store,
                 "--no-plots"]) == 0
    printed = capsys.readouterr().out
    assert "sign agreement (tiny/synthetic, mAP): 50% of 6 rows have the paper's sign, 33% also beyond" in printed
    table = pd.read_csv(out / "sign_agreement.csv")
    assert len(table) == 12 and set(table["metric"]) == {"mAP", "R1"}
    markdown = (out / "leaderboard.md").read_text()
    assert "## Sign agreement with the papers' ablations" in markdown and "< 0 (text)" in markdown
