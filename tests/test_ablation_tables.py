"""The CCAF and CLIP-SCGI ablation sweeps' outputs, from MLflow runs logged exactly as their
trials log them (``open_run`` on each grid point's run config; test metrics made up, nothing
trained): the leaderboard renders CCAF Tables 3/4 and CLIP-SCGI Tables III/IV in the papers'
shape with the published numbers beside ours, and the sweep writes the λ1/λ2 and the CGI
depth / K sensitivity plots."""

from __future__ import annotations

import argparse
import re
import importlib.util
from pathlib import Path

import pytest

from reidbench.harness import plots
from reidbench.harness.api import config_hash
from reidbench.harness.leaderboard import load_runs
from reidbench.harness.run_config import build_run_config, resolved_dict
from reidbench.harness.tracking import close_run, open_run
from reidbench.harness.tune import SMOKE_OVERRIDES, expand, sweep_base, write_sweep_leaderboard

REPO = Path(__file__).resolve().parents[1]
SETUP = "tiny/synthetic/epochs*0.15"  # what the smoke overrides make of a run's setup


def sweep_module(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "sweeps" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def made_up_map(params: dict) -> float:
    """A test mAP that encodes the run's configuration, so a table cell or a plot point
    that picks the wrong run shows it."""
    p = params
    if p["method"] == "ccaf":
        value = 30.0 + 2 * p["use_i2t"] + 4 * p["use_i2i"] + 8 * p["use_cfm"] + 1 * p["use_shield_i2t"]
        value += 0.5 * (p["cfm_supervision"] == "prompts")
        return value + 10 * p["lambda_con"] + 0.1 * p["lambda_dis"]
    value = 40.0 + 3 * p["use_cgi"] + 5 * p["use_cff"] + 2 * (p["cff_query"] == "text")
    return value + 0.5 * p["cgi_depth"] + 0.25 * p["num_queries"] - 7 * (p["caption_source"] == "fixed")


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """Every grid point of both full sweeps (seed 0; CLIP-SCGI on synthetic_market only),
    logged to one store the way a trial opens and closes its run."""
    out = tmp_path_factory.mktemp("sweeps")
    boards = {}
    for script, datasets, protocols in (("ablation_ccaf", ["synthetic_cc"], ("cc", "same_clothes")),
                                        ("ablation_scgi", ["synthetic_market"], ("standard",))):
        module = sweep_module(script)
        base = sweep_base(["data.val_fraction=0", *SMOKE_OVERRIDES], script, str(out))
        for point in expand(module.trials(argparse.Namespace(smoke=False)), datasets, [0]):
            cfg = build_run_config(overrides=[*base, *point["overrides"]])
            resolved = resolved_dict(cfg)
            uri, run_id = open_run(cfg, resolved, config_hash=config_hash(resolved))
            m_ap = made_up_map({"method": cfg.method, **resolved["params"]})
            from mlflow.tracking import MlflowClient

            client = MlflowClient(uri)
            for i, protocol in enumerate(protocols):
                for metric, value in (("mAP", m_ap - i), ("R1", m_ap + 5 - i), ("R5", 90.0), ("R10", 95.0),
                                      ("mINP", 20.0)):
                    client.log_metric(run_id, f"test/{protocol}/{metric}", value)
            close_run(uri, run_id, "FINISHED")
        board = out / "leaderboard" / script
        written = write_sweep_leaderboard(script, base, str(board))
        boards[script] = {"dir": board, "written": written, "uri": uri,
                          "md": (board / "leaderboard.md").read_text()}
    return boards


def table_rows(md: str, heading: str) -> dict[str, list[str]]:
    """The rows of one paper table of the Markdown, by their 'paper row' cell."""
    section = md[md.index(heading):]
    end = re.search(r"\n#{2,3} ", section[5:])  # the next table, or the next section
    end = end.start() + 5 if end else None
    lines = [ln for ln in section[:end].splitlines() if ln.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split(" | ")]
    return {cells[0]: cells for cells in ([c.strip() for c in ln.strip("| ").split(" | ")] for ln in lines[1:])
            if cells[0] != "---"} | {"__header__": header}


def test_ccaf_tables_3_and_4_in_the_papers_shape_beside_the_published_numbers(swept):
    md = swept["ablation_ccaf"]["md"]
    t3 = table_rows(md, "### CCAF Table 3")
    assert t3["__header__"] == ["paper row", "method", "ablation", "setup", "n seeds", "ltcc (cc) R1",
                                "ltcc (cc) mAP", "prcc (cc) R1", "prcc (cc) mAP"]
    assert [k for k in t3 if k != "__header__"] == ["B", "B + I2T", "B + I2T + I2I", "B + I2T + I2I + CFM"]
    # synthetic_cc stands in for PRCC; each cell: ours · paper as printed, never a difference (tiny setup)
    expected = {"B": (30.0 + 1 + 0.5 + 1 + 0.1, "59.1", "baseline"),
                "B + I2T": (30.0 + 2 + 1 + 0.5 + 1 + 0.1, "61.3", "no_i2i_no_cfm"),
                "B + I2T + I2I": (30.0 + 2 + 4 + 1 + 0.5 + 1 + 0.1, "63.6", "no_cfm"),
                "B + I2T + I2I + CFM": (30.0 + 2 + 4 + 8 + 1 + 0.5 + 1 + 0.1, "63.7", "default")}
    for row, (m_ap, paper, ablation) in expected.items():
        cells = t3[row]
        assert cells[2] == ablation and cells[3] == SETUP and cells[4] == "1"
        assert cells[8] == f"{m_ap:.2f} · paper {paper}", (row, cells)
        assert cells[5] == "— · paper " + {"B": "35.2", "B + I2T": "39.0", "B + I2T + I2I": "40.3",
                                           "B + I2T + I2I + CFM": "42.9"}[row]  # no LTCC run
        assert "Δ" not in "".join(cells)
    t4 = table_rows(md, "### CCAF Table 4")
    assert [k for k in t4 if k != "__header__"] == ["all text-prompt losses", "r/p L^c_i2tce",
                                                     "w/o L^s_i2tce, r/p L^c_i2tce",
                                                     "w/o L_i2tce, w/o L^s_i2tce, r/p L^c_i2tce"]
    assert t4["r/p L^c_i2tce"][8] == f"{30.0 + 2 + 4 + 8 + 1 + 1 + 0.1:.2f} · paper 63.4"
    assert t4["w/o L_i2tce, w/o L^s_i2tce, r/p L^c_i2tce"][8] == f"{30.0 + 4 + 8 + 1 + 0.1:.2f} · paper 59.6"
    assert "R1 67.0, mAP 59.6 (CCAF Table 4)" in md  # the all-rows table prints published numbers as printed


def test_ccaf_sweep_draws_one_log_scaled_sensitivity_plot_per_lambda(swept):
    board = swept["ablation_ccaf"]
    names = {p.name for p in board["written"] if p.suffix == ".png"}
    for protocol in ("cc", "same_clothes"):
        for key in ("lambda_con", "lambda_dis"):
            assert f"sensitivity_ccaf_synthetic_cc_{protocol}_tiny_synthetic_epochs_0.15_params.{key}.png" in names
    runs = load_runs("ablation_ccaf", board["uri"]).runs
    for key, values, slope in (("lambda_con", (0.01, 0.05, 0.1, 0.5, 1.0), 10.0),
                               ("lambda_dis", (0.1, 0.5, 1.0, 2.0, 10.0), 0.1)):
        col = f"params.params.{key}"
        table = plots.sensitivity_table(plots.one_factor_runs(runs, col), col, "cc")
        assert list(table["value"]) == list(values)  # the centre is the default row, the others its axis
        full = 30.0 + 2 + 4 + 8 + 1 + 0.5
        other = 0.1 * 1.0 if key == "lambda_con" else 10 * 0.1  # the other λ at the paper's value
        assert list(table["mAP_mean"]) == pytest.approx([full + slope * v + other for v in values])
        assert plots.sensitivity_figure(table, col).axes[0].get_xscale() == "log"


def test_clip_scgi_tables_iii_and_iv_and_the_depth_and_k_plots(swept):
    board = swept["ablation_scgi"]
    md = board["md"]
    t3 = table_rows(md, "### CLIP-SCGI Table 3")
    assert [k for k in t3 if k != "__header__"] == ["No.1: CGI only", "No.2: CFF only", "No.3: CGI + CFF"]
    assert t3["__header__"][5:] == ["market1501 R1", "market1501 mAP", "msmt17 R1", "msmt17 mAP"]
    full = 40.0 + 3 + 5 + 2 + 0.5 + 0.5
    assert t3["No.1: CGI only"][6] == f"{full - 5:.2f} · paper 89.6"
    assert t3["No.2: CFF only"][6] == f"{full - 3:.2f} · paper 93.6"
    assert t3["No.3: CGI + CFF"][6] == f"{full:.2f} · paper 96.0"
    assert t3["No.3: CGI + CFF"][8] == "— · paper 88.2"  # no MSMT17 run
    t4 = table_rows(md, "### CLIP-SCGI Table 4")
    assert t4["replace Q"][6] == f"{full - 2:.2f} · paper 94.1"
    assert "fixed_caption" in md  # the control is in the all-rows table (the paper has no row for it)
    names = {p.name for p in board["written"] if p.suffix == ".png"}
    runs = load_runs("ablation_scgi", board["uri"]).runs
    for key, values, slope in (("cgi_depth", (1, 2, 3, 4, 5, 6), 0.5), ("num_queries", (1, 2, 4, 8), 0.25)):
        assert f"sensitivity_clip_scgi_synthetic_market_standard_tiny_synthetic_epochs_0.15_params.{key}.png" in names
        col = f"params.params.{key}"
        table = plots.sensitivity_table(plots.one_factor_runs(runs, col), col, "standard")
        assert list(table["value"]) == list(values)
        base = full - 0.5 * (key == "cgi_depth") - 0.5 * (key == "num_queries")
        assert list(table["mAP_mean"]) == pytest.approx([base + slope * v for v in values])
        assert plots.sensitivity_figure(table, col).axes[0].get_xscale() == "linear"
