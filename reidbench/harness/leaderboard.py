"""The leaderboard: one MLflow experiment's runs as the papers' tables, published numbers beside them.

``leaderboard(experiment, tracking_uri)`` reads the experiment (``search_runs``: the frame
``mlflow.search_runs`` returns, without its global state) and returns one row per
(method, ablation, dataset, protocol, setup) with the number of seeds, mean and standard
deviation of R1, R5, R10, mAP and mINP, the run ids, and the published numbers of the
same configuration with the difference. ``write_leaderboard``
writes it as ``leaderboard.csv`` and ``leaderboard.md`` (the Markdown also renders every
paper table that a run belongs to in the paper's shape: rows = the table's ablations,
columns = its datasets x metrics).

Decisions (what a reader of the numbers needs to know):

* Only FINISHED runs count; a FAILED, KILLED or RUNNING run is skipped (and counted in
  ``BoardRuns.skipped``). Two FINISHED runs of one (method, ablation, dataset, seed,
  setup) should not exist (tracking.py replaces runs); if they do, the one that ended
  last is kept.
* ``std`` is the sample standard deviation over seeds (ddof=1), empty for one seed;
  ``R1_per_seed`` / ``mAP_per_seed`` list each seed's value (``0:32.45 1:32.74 2:33.55``).
* The **setup** column says how a run differs from the paper's setup, from its logged
  params: ``tiny`` (the tiny preset), ``synthetic`` (a ``synthetic_*`` dataset, or a
  ``data.root`` written by ``reidbench data synth``), ``backbone=X`` (not ViT-B/16),
  ``random-init`` / ``synthetic-clip`` (not the real pretrained CLIP), ``epochs*S``
  (``optim.epochs_scale`` != 1); ``unknown`` when the params are missing. ``paper``
  means none of these. ``@<8 hex digits>`` ends the label of a run on the synthetically
  pretrained tiny CLIP (``backbone.pretrained=synthetic``): the start of its
  ``backbone.init_sha256`` tag. ``reidbench pretrain`` makes those weights on each machine,
  bit-identical on one but not across CPUs, and results move with them more than with the
  seed, so runs from different tiny CLIPs are different setups (runs logged before the tag
  existed have no suffix). Runs of different setups are never averaged together, and the
  difference to the published number (``diff_*``) is filled only for ``paper`` rows:
  other rows show the published number beside theirs, labelled, never compared.
* A synthetic dataset is shown against the real benchmark it stands in for
  (``synthetic_occluded`` -> ``occluded_duke``, ...; ``reidbench.datasets.synthetic_sets``),
  with ``synthetic`` in its setup so no difference is computed.
* Protocol names are the evaluation names of the dataset adapters, as logged in
  ``test/<protocol>/<metric>``; ``general`` (LTCC, VC-Clothes) is the paper tables'
  ``standard`` setting and is matched as such. The ablation ``full`` is matched as
  ``default`` (both mean the full model).
* Several papers quote the same configuration (e.g. CLIP-ReID on Occluded-Duke in ProFD,
  CLIP-SCGI and SCING; a method's full model in its main and its ablation tables). The
  CSV's ``published_*`` columns take one source: the method's own paper first, then the
  order of ``published.csv``; ``published_source`` names it. The Markdown's paper tables
  show each paper's own numbers.

Published numbers (``reidbench/data/published.csv``): columns ``method, ablation,
dataset, protocol, metric, value, paper, table, row, note``; values in percent exactly as
printed; ``paper`` is the paper that prints them (``profd``, ``ccaf``, ``clip_scgi``,
``scing``, ``bdam``), ``table`` its table number in arabic numerals (BDAM's TABLE I-IV
are Table 1-4), ``row`` the row as the paper labels it, ``note`` what a reader should
know (e.g. a value taken from the text because the table body is missing from the copy).
Rows with an empty value keep a table's shape where the copy lost its body (ProFD
Tables 4 and 5). Only the five methods and their shared baselines are transcribed, not
the other methods of the comparison tables. Figures (ProFD Fig. 4, CCAF Fig. 4, CLIP-SCGI
Fig. 4) have no numbers in the copies and SCING Table 4 averages over datasets, so none
of them is in the file.

Ablation names (the ``ablation`` tag a sweep gives a run; ``default`` is the method's
full model as published, which is also what ``reidbench train`` tags a plain run).
``no_X`` removes component X from the full model, ``X_only`` keeps only X of a table's
group, ``baseline`` is a table's all-off row, other names say what replaces what:

==========  =======  ===============================================================
method      table    ablations (paper row)
==========  =======  ===============================================================
profd       T1       ``stride12`` (ProFD*: overlapping patch stride 12)
profd       T3       ``no_attention`` (weighted average pooling), ``sea_only``,
                     ``spa_only``, ``default`` (SEA + SPA)
profd       T4       ``no_memory``, ``global_memory_only``, ``part_memory_only``, ``default``
profd       T5       ``no_align_no_div``, ``no_div`` (+ L_align), ``no_align`` (+ L_div),
                     ``default``
clip_reid   ProFD T1 ``stride12`` (CLIP-ReID*); CLIP-SCGI T1 ``rn50`` (ResNet-50)
baseline    SCGI T1  ``default`` (ViT-B/16), ``rn50``: CLIP-ReID's image-only baseline
ccaf        T3       ``baseline`` (B), ``no_i2i_no_cfm`` (B+I2T), ``no_cfm`` (B+I2T+I2I),
                     ``default``
ccaf        T4       ``onehot_cfm`` (r/p L^c_i2tce), ``onehot_cfm_no_shield_text``
                     (also w/o L^s_i2tce), ``no_text_prompts`` (also w/o L_i2tce)
clip_scgi   T1       ``rn50`` (ResNet-50 image encoder)
clip_scgi   T3       ``no_cff`` (CGI only), ``no_cgi`` (CFF only), ``default``
clip_scgi   T4       ``replace_q`` (CFF query = image features)
scing       T3       ``baseline`` (CLIP-ReID), ``metanet`` (CoCoOp meta-net),
                     ``no_pdca`` (SVIP only), ``default`` (SVIP + PDCA)
bdam        T2       ``baseline``, ``bdam_only`` (+ BDAM), ``bdam_only_no_cross_attn``,
                     ``bdam_only_no_gate``, ``bdam_only_shallow`` (3 layers)
bdam        T3       ``baseline``, ``fusion_only`` (Full Fusion), ``fusion_only_no_mamba``,
                     ``fusion_only_no_gate``, ``fusion_only_no_align``
bdam        T4       ``no_infonce``, ``no_triplet``, ``no_align_loss``, ``no_decouple``,
                     ``no_gate_reg``, ``default``
==========  =======  ===============================================================

``published_ablations(method)`` lists them with their tables and paper rows, so a sweep
can take its grid from the same source.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from .tracking import INIT_TAG

METRICS = ("R1", "R5", "R10", "mAP", "mINP")
PER_SEED = ("R1", "mAP")  # metrics whose per-seed values the leaderboard lists beside mean ± std
KEY = ("method", "ablation", "dataset", "protocol")
GROUP = (*KEY, "setup")
PAPERS = {"profd": "ProFD", "ccaf": "CCAF", "clip_scgi": "CLIP-SCGI", "scing": "SCING", "bdam": "BDAM"}
HOME_PAPER = {"profd": "profd", "ccaf": "ccaf", "clip_scgi": "clip_scgi", "scing": "scing", "bdam": "bdam"}
TABLE_CAPTIONS = {
    ("profd", "Table 1"): "occluded ReID",
    ("profd", "Table 2"): "holistic ReID",
    ("profd", "Table 3"): "attention mechanisms of the hybrid-attention decoder",
    ("profd", "Table 4"): "self-distillation (memory banks)",
    ("profd", "Table 5"): "loss functions",
    ("ccaf", "Table 1"): "LTCC, PRCC and VC-Clothes",
    ("ccaf", "Table 2"): "DeepChange",
    ("ccaf", "Table 3"): "components (cloth-changing setting)",
    ("ccaf", "Table 4"): "text-prompt losses (cloth-changing setting)",
    ("clip_scgi", "Table 1"): "comparison with the state of the art",
    ("clip_scgi", "Table 2"): "efficiency (mAP column)",
    ("clip_scgi", "Table 3"): "components",
    ("clip_scgi", "Table 4"): "query of the CFF module",
    ("scing", "Table 1"): "holistic ReID",
    ("scing", "Table 2"): "occluded ReID",
    ("scing", "Table 3"): "components",
    ("bdam", "Table 1"): "comparison with the state of the art",
    ("bdam", "Table 2"): "the BDAM module",
    ("bdam", "Table 3"): "the fusion module",
    ("bdam", "Table 4"): "loss components",
}
PROTOCOL_ALIASES = {"general": "standard"}
ABLATION_ALIASES = {"full": "default"}
PAPER_BACKBONE = "vit-b16"
PAPER_PRESET = "paper"
# Params that never make runs different experiments (for sensitivity-plot detection).
NON_SETTINGS = ("seed", "output_dir", "data.root", "data.num_workers", "data.eval_batch_size", "tracking.")


# ----------------------------------------------------------------------------- published numbers

def published_path() -> Path:
    return Path(str(resources.files("reidbench") / "data" / "published.csv"))


def load_published(path: str | Path | None = None) -> pd.DataFrame:
    """The published numbers, one row per (method, ablation, dataset, protocol, metric, paper, table).

    ``value`` is a float (NaN where the paper copy lost the number), ``value_text`` the
    number as printed (``21.0`` stays ``21.0``)."""
    df = pd.read_csv(path or published_path(), dtype=str, keep_default_na=False)
    expected = ["method", "ablation", "dataset", "protocol", "metric", "value", "paper", "table", "row", "note"]
    if list(df.columns) != expected:
        raise ValueError(f"{path or published_path()}: expected columns {expected}, found {list(df.columns)}")
    bad = sorted(set(df["metric"]) - set(METRICS))
    if bad:
        raise ValueError(f"{path or published_path()}: unknown metric(s) {bad}; expected one of {METRICS}")
    df["value_text"] = df["value"]
    df["value"] = pd.to_numeric(df["value"].replace("", np.nan))
    return df


def published_ablations(method: str, published: pd.DataFrame | None = None) -> pd.DataFrame:
    """The ablations of ``method`` that the papers print: ablation, paper, table, row, datasets."""
    pub = load_published() if published is None else published
    rows = pub[pub["method"] == method]
    out = (rows.groupby(["ablation", "paper", "table", "row"], sort=False)["dataset"]
           .agg(lambda s: ",".join(dict.fromkeys(s))).reset_index().rename(columns={"dataset": "datasets"}))
    return out


def _primary_sources(pub: pd.DataFrame) -> pd.DataFrame:
    """One (paper, table) per key: the method's own paper first, then file order."""
    pub = pub.copy()
    pub["_order"] = range(len(pub))
    pub["_home"] = [0 if HOME_PAPER.get(m) == p else 1 for m, p in zip(pub["method"], pub["paper"])]
    with_value = pub[pub["value"].notna()]
    first = (with_value.sort_values(["_home", "_order"]).groupby(list(KEY), sort=False)[["paper", "table"]]
             .first().reset_index())
    chosen = with_value.merge(first, on=[*KEY, "paper", "table"])
    wide = chosen.pivot_table(index=list(KEY), columns="metric", values="value", aggfunc="first")
    wide.columns = [f"published_{m}" for m in wide.columns]
    wide = wide.reset_index().merge(first, on=list(KEY))
    wide["published_source"] = [f"{PAPERS.get(p, p)} {t}" for p, t in zip(wide["paper"], wide["table"])]
    for m in METRICS:
        if f"published_{m}" not in wide:
            wide[f"published_{m}"] = np.nan
    return wide.drop(columns=["paper", "table"])


# ----------------------------------------------------------------------------- runs

def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else the store ``reidbench train`` writes by default
    (``sqlite:///<cwd>/runs/mlflow.db``)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('runs/mlflow.db').resolve()}"


def search_runs(client, experiment_id: str) -> pd.DataFrame:
    """The experiment's runs as ``mlflow.search_runs`` shapes them (``run_id``, ``status``,
    ``end_time``, ``tags.*``, ``params.*``, ``metrics.*``), read through ``MlflowClient``:
    ``mlflow.search_runs`` reads the process-global tracking URI, and setting it also sets
    ``MLFLOW_TRACKING_URI`` in the environment, which a sweep driver must not have changed
    under it."""
    rows, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        for run in page:
            row = {"run_id": run.info.run_id, "status": run.info.status, "start_time": run.info.start_time,
                   "end_time": run.info.end_time}
            row.update({f"tags.{k}": v for k, v in run.data.tags.items()})
            row.update({f"params.{k}": v for k, v in run.data.params.items()})
            row.update({f"metrics.{k}": v for k, v in run.data.metrics.items()})
            rows.append(row)
        token = page.token
        if not token:
            return pd.DataFrame(rows)


def is_synthetic(dataset: str, root: str | None = None) -> bool:
    """A ``synthetic_*`` dataset, or a real adapter reading a folder the generator wrote
    (it leaves ``reidbench_meta.jsonl`` in each dataset folder; real datasets have none)."""
    if dataset.startswith("synthetic"):
        return True
    if not root or root == "None":
        return False
    base = Path(root).expanduser()
    if not base.is_dir():
        return False
    return any(next(base.glob(pattern), None) is not None
               for pattern in ("reidbench_meta.jsonl", "*/reidbench_meta.jsonl", "*/*/reidbench_meta.jsonl"))


def paper_dataset(dataset: str) -> str:
    """The real benchmark a dataset stands in for (itself unless it is a synthetic one)."""
    if dataset.startswith("synthetic"):
        from ..datasets.synthetic_sets import SYNTHETIC

        if dataset in SYNTHETIC:
            return SYNTHETIC[dataset][1]
    return dataset


def setup_label(params: Mapping[str, str], dataset: str, init_sha256: str | None = None) -> str:
    """How a run's setup differs from the paper's (module docstring); ``paper`` if it does not.
    ``init_sha256``: the run's ``backbone.init_sha256`` tag, appended as ``@<8 hex digits>`` when
    the backbone is the synthetically pretrained tiny CLIP (machine-made weights)."""
    preset = params.get("preset")
    if preset in (None, "", "nan"):
        return "unknown"
    labels = []
    if preset != PAPER_PRESET:
        labels.append(str(preset))
    else:
        backbone = params.get("backbone.preset")
        if backbone != PAPER_BACKBONE:
            labels.append(f"backbone={backbone}")
        pretrained = params.get("backbone.pretrained")
        if pretrained in (None, "", "None", "nan"):
            labels.append("random-init")
        elif pretrained == "synthetic":
            labels.append("synthetic-clip")
    if is_synthetic(dataset, params.get("data.root")):
        labels.append("synthetic")
    scale = params.get("optim.epochs_scale")
    with contextlib.suppress(TypeError, ValueError):
        if scale not in (None, "") and float(scale) != 1.0:
            labels.append(f"epochs*{float(scale):g}")
    label = "/".join(labels) or "paper"
    if params.get("backbone.pretrained") == "synthetic" and isinstance(init_sha256, str) and init_sha256:
        label += f"@{init_sha256[:8]}"
    return label


@dataclass
class BoardRuns:
    """The experiment's usable runs, one row each: tags, setup, ``metrics.*`` and ``params.*``."""

    runs: pd.DataFrame
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count


def load_runs(experiment: str, tracking_uri: str | None = None) -> BoardRuns:
    """FINISHED runs of ``experiment`` that carry the run tags (tracking.py conventions): the
    latest run of each configuration that no re-run has superseded."""
    from mlflow.tracking import MlflowClient

    uri = tracking_uri or default_tracking_uri()
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise LookupError(f"no MLflow experiment named {experiment!r} in {uri}; "
                          f"experiments there: {', '.join(names) or '(none)'}")
    df = search_runs(client, exp.experiment_id)
    skipped: dict[str, int] = {}
    columns = ["run_id", *KEY[:3], "seed", "setup", "paper_dataset", "end_time"]
    if df.empty:
        return BoardRuns(pd.DataFrame(columns=columns), skipped)
    unfinished = df["status"] != "FINISHED"
    if unfinished.any():
        for status, n in df.loc[unfinished, "status"].value_counts().items():
            skipped[f"status {status}"] = int(n)
    df = df[~unfinished]
    for tag in ("method", "ablation", "dataset", "seed"):
        col = f"tags.{tag}"
        if col not in df:
            df = df.assign(**{col: np.nan})
    untagged = df[["tags.method", "tags.ablation", "tags.dataset", "tags.seed"]].isna().any(axis=1)
    if untagged.any():
        skipped["no method/ablation/dataset/seed tags"] = int(untagged.sum())
    df = df[~untagged].copy()
    df["method"] = df["tags.method"]
    df["ablation"] = df["tags.ablation"]
    df["dataset"] = df["tags.dataset"]
    df["seed"] = df["tags.seed"]
    param_cols = [c for c in df.columns if c.startswith("params.")]
    df["setup"] = [setup_label({c[len("params."):]: row[c] for c in param_cols if isinstance(row[c], str)},
                               row["dataset"], row.get(f"tags.{INIT_TAG}")) for _, row in df.iterrows()]
    df["paper_dataset"] = [paper_dataset(d) for d in df["dataset"]]
    df = df.sort_values("end_time")
    # A run re-run with the same resolved config is tagged superseded (tracking.open_run) and kept
    # in MLflow; the board takes the latest non-superseded run of each configuration ...
    if "tags.superseded" in df:
        superseded = df["tags.superseded"].notna() & (df["tags.superseded"] != "")
        if superseded.any():
            skipped["superseded by a re-run of its config"] = int(superseded.sum())
        df = df[~superseded]
    if "tags.config_hash" in df:
        hashed = df["tags.config_hash"].notna()
        latest = df[hashed].drop_duplicates(subset=["tags.config_hash"], keep="last")
        if len(latest) < int(hashed.sum()):
            skipped["older run of the same config"] = int(hashed.sum()) - len(latest)
        df = pd.concat([df[~hashed], latest]).sort_values("end_time")
    # ... and one run per seed of a row: runs of one name whose configs differ otherwise (an lr
    # outside the ablation name) are not averaged together; the latest one counts.
    deduped = df.drop_duplicates(subset=["method", "ablation", "dataset", "seed", "setup"], keep="last")
    if len(deduped) < len(df):
        skipped["older duplicate of a seed"] = len(df) - len(deduped)
    keep = [*columns, *[c for c in deduped.columns if c.startswith(("metrics.", "params."))]]
    return BoardRuns(deduped[keep].reset_index(drop=True), skipped)


def protocols(runs: pd.DataFrame) -> list[str]:
    """Protocols with a final test metric among ``runs`` (``metrics.test/<protocol>/<metric>``)."""
    found = []
    for col in runs.columns:
        parts = col.split("/")
        if col.startswith("metrics.test/") and len(parts) == 3 and parts[2] in METRICS and parts[1] not in found:
            found.append(parts[1])
    return found


# ----------------------------------------------------------------------------- aggregation

def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, ablation, dataset, protocol, setup): n_seeds, seeds, mean/std per metric, run ids."""
    rows = []
    for protocol in protocols(runs):
        cols = {m: f"metrics.test/{protocol}/{m}" for m in METRICS}
        have = runs[runs[cols["R1"]].notna()] if cols["R1"] in runs else runs.iloc[0:0]
        for key, group in have.groupby(["method", "ablation", "dataset", "setup"], sort=False):
            row = dict(zip(("method", "ablation", "dataset", "setup"), key))
            row.update(protocol=protocol, paper_dataset=group["paper_dataset"].iloc[0], n_seeds=len(group),
                       seeds=",".join(sorted(group["seed"].astype(str), key=_seed_order)),
                       run_ids=";".join(group["run_id"]))
            for m, col in cols.items():
                values = group[col].astype(float).dropna() if col in group else pd.Series(dtype=float)
                row[f"{m}_mean"] = float(values.mean()) if len(values) else np.nan
                row[f"{m}_std"] = float(values.std(ddof=1)) if len(values) > 1 else np.nan
            for m in PER_SEED:
                row[f"{m}_per_seed"] = _per_seed(group, cols[m])
            rows.append(row)
    columns = [*GROUP, "paper_dataset", "n_seeds", "seeds",
               *[f"{m}_{s}" for m in METRICS for s in ("mean", "std")], *[f"{m}_per_seed" for m in PER_SEED],
               "run_ids"]
    return pd.DataFrame(rows, columns=columns)


def _per_seed(group: pd.DataFrame, col: str) -> str:
    """``seed:value`` of each run, in seed order (``0:32.45 1:32.74 2:33.55``)."""
    if col not in group:
        return ""
    pairs = sorted(zip(group["seed"].astype(str), group[col].astype(float)), key=lambda p: _seed_order(p[0]))
    return " ".join(f"{seed}:{value:.2f}" for seed, value in pairs if not math.isnan(value))


def _seed_order(seed: str):
    return (0, int(seed), "") if seed.lstrip("-").isdigit() else (1, 0, seed)


def _with_paper_keys(board: pd.DataFrame) -> pd.DataFrame:
    """``paper_ablation`` / ``paper_protocol``: the names the published tables use."""
    out = board.copy()
    out["paper_ablation"] = [ABLATION_ALIASES.get(a, a) for a in out["ablation"]]
    out["paper_protocol"] = [PROTOCOL_ALIASES.get(p, p) for p in out["protocol"]]
    return out


def join_published(board: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """Add ``published_<metric>``, ``published_source`` and ``diff_<metric>`` (``paper`` setups only)."""
    primary = _primary_sources(published).rename(columns={"ablation": "paper_ablation", "dataset": "paper_dataset",
                                                          "protocol": "paper_protocol"})
    out = _with_paper_keys(board)
    out = out.merge(primary, on=["method", "paper_ablation", "paper_dataset", "paper_protocol"], how="left")
    comparable = out["setup"] == "paper"
    for m in METRICS:
        out[f"diff_{m}"] = np.where(comparable, out[f"{m}_mean"] - out[f"published_{m}"], np.nan)
    out["published_source"] = out["published_source"].fillna("")
    return out


def leaderboard(experiment: str, tracking_uri: str | None = None,
                published: pd.DataFrame | None = None) -> pd.DataFrame:
    """The experiment's leaderboard (see the module docstring for every column's meaning)."""
    runs = load_runs(experiment, tracking_uri).runs
    return leaderboard_sorted(join_published(aggregate(runs), load_published() if published is None else published))


def leaderboard_sorted(board: pd.DataFrame) -> pd.DataFrame:
    """Rows by method, benchmark, protocol, ``default`` first; columns in the CSV's order."""
    ablation_rank = board["ablation"].map(lambda a: (0, "") if a == "default" else (1, a))
    board = (board.assign(_a=ablation_rank).sort_values(["method", "paper_dataset", "protocol", "_a", "setup"])
             .drop(columns="_a").reset_index(drop=True))
    columns = [*GROUP, "n_seeds", "seeds", *[f"{m}_{s}" for m in METRICS for s in ("mean", "std")],
               *[f"{m}_per_seed" for m in PER_SEED],
               "paper_ablation", "paper_dataset", "paper_protocol", "published_source",
               *[f"published_{m}" for m in METRICS], *[f"diff_{m}" for m in METRICS], "run_ids"]
    return board[columns]


# ----------------------------------------------------------------------------- Markdown

def _ours(mean: float, std: float) -> str:
    if mean is None or math.isnan(mean):
        return "—"
    return f"{mean:.2f} ± {std:.2f}" if not math.isnan(std) else f"{mean:.2f}"


def _cell(row: pd.Series | None, metric: str, published_text: str | None, published: float) -> str:
    ours = _ours(row[f"{metric}_mean"], row[f"{metric}_std"]) if row is not None else "—"
    if published_text is None:
        return ours
    paper = published_text if published_text else "n/a"
    text = f"{ours} · paper {paper}"
    ours_mean = row[f"{metric}_mean"] if row is not None else float("nan")
    if row is not None and row["setup"] == "paper" and not math.isnan(published) and not math.isnan(ours_mean):
        text += f" · Δ {ours_mean - published:+.2f}"
    return text


def _printed(value: float) -> str:
    """A published number as the papers print them (one or two decimals): 67.0, 59.81."""
    text = f"{value:.2f}"
    return text[:-1] if text.endswith("0") else text


def _escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(_escape(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_escape(c) for c in r) + " |" for r in rows]
    return lines


def paper_tables(board: pd.DataFrame, published: pd.DataFrame) -> list[str]:
    """Every paper table that a reproduced row belongs to, in the paper's shape."""
    lines: list[str] = []
    board = _with_paper_keys(board)
    reproduced = set(zip(board["method"], board["paper_ablation"], board["paper_dataset"], board["paper_protocol"]))
    for (paper, table), pub in published.groupby(["paper", "table"], sort=False):
        keys = set(zip(pub["method"], pub["ablation"], pub["dataset"], pub["protocol"]))
        if not keys & reproduced:
            continue
        columns = list(dict.fromkeys(zip(pub["dataset"], pub["protocol"])))
        present = set(zip(pub["dataset"], pub["protocol"], pub["metric"]))
        metrics = {(d, p): [m for m in METRICS if (d, p, m) in present] for (d, p) in columns}
        header = ["paper row", "method", "ablation", "setup", "n seeds"]
        header += [f"{d}{'' if p == 'standard' else f' ({p})'} {m}" for (d, p) in columns for m in metrics[(d, p)]]
        body = []
        for (method, ablation, row_label), prow in pub.groupby(["method", "ablation", "row"], sort=False):
            ours = board[(board["method"] == method) & (board["paper_ablation"] == ablation)
                         & pd.Series(list(zip(board["paper_dataset"], board["paper_protocol"])), index=board.index)
                         .isin(columns)]
            setups = list(dict.fromkeys(ours["setup"])) or [None]
            for setup in setups:
                cells, seeds = [], []
                for (d, p) in columns:
                    same = (ours["setup"] == setup) & (ours["paper_dataset"] == d) & (ours["paper_protocol"] == p)
                    match = ours[same]
                    run = match.iloc[0] if len(match) else None
                    if run is not None:
                        seeds.append(str(int(run["n_seeds"])))
                    for m in metrics[(d, p)]:
                        hit = prow[(prow["dataset"] == d) & (prow["protocol"] == p) & (prow["metric"] == m)]
                        text = hit["value_text"].iloc[0] if len(hit) else None
                        value = float(hit["value"].iloc[0]) if len(hit) else float("nan")
                        cells.append(_cell(run, m, text, value) if text is not None or run is not None else "")
                seed_text = seeds[0] if len(set(seeds)) == 1 else "/".join(seeds) if seeds else "0"
                # the runs' own ablation tag where it is an alias of the paper's (a sweep's "full")
                shown = "/".join(dict.fromkeys(ours.loc[ours["setup"] == setup, "ablation"])) or ablation
                body.append([row_label, method, shown, setup or "—", seed_text, *cells])
        notes = {}
        for label, note in zip(pub["row"], pub["note"]):
            if note:
                notes.setdefault(note, []).append(label)
        title = f"### {PAPERS.get(paper, paper)} {table}: {TABLE_CAPTIONS.get((paper, table), '')}".rstrip(": ")
        lines += ["", title, ""]
        lines += _table(header, body)
        lines += [f"\n*{'; '.join(dict.fromkeys(labels))}:* {note}" for note, labels in notes.items()]
    return lines


def to_markdown(board: pd.DataFrame, published: pd.DataFrame, experiment: str = "") -> str:
    title = f"# Leaderboard{f': {experiment}' if experiment else ''}"
    lines = [title, "",
             "Mean ± sample standard deviation over seeds, in percent. `setup` says how a row's runs differ "
             "from the paper's (`tiny` preset, `synthetic` data, another `backbone=`, `random-init` or "
             "`synthetic-clip` weights, `epochs*S`); only `paper` rows get a difference (Δ) to the published "
             "number, the others show it beside theirs without comparing.", "",
             "## All reproduced rows", ""]
    header = ["method", "ablation", "dataset", "protocol", "setup", "seeds", *METRICS, "mAP per seed",
              "published (source)"]
    body = []
    for _, r in board.iterrows():
        pub = [f"{m} {_printed(r[f'published_{m}'])}" for m in METRICS if not math.isnan(r[f"published_{m}"])]
        source = f"{', '.join(pub)} ({r['published_source']})" if pub else ""
        body.append([r["method"], r["ablation"], r["dataset"], r["protocol"], r["setup"], r["seeds"],
                     *[_ours(r[f"{m}_mean"], r[f"{m}_std"]) for m in METRICS], r.get("mAP_per_seed", ""), source])
    lines += _table(header, body)
    tables = paper_tables(board, published)
    if tables:
        lines += ["", "## As in the papers' tables",
                  "", "Cells: ours · paper (as printed) · Δ (ours − paper, `paper` setup only)."] + tables
    return "\n".join(lines) + "\n"


def write_leaderboard(df: pd.DataFrame, out_dir: str | Path, experiment: str = "",
                      published: pd.DataFrame | None = None) -> dict[str, Path]:
    """Write ``leaderboard.csv`` and ``leaderboard.md`` into ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / "leaderboard.csv", out / "leaderboard.md"
    df.to_csv(csv_path, index=False, float_format="%.4f")
    md_path.write_text(to_markdown(df, load_published() if published is None else published, experiment))
    return {"csv": csv_path, "markdown": md_path}


# ----------------------------------------------------------------------------- CLI

def write_outputs(runs: pd.DataFrame, out_dir: str | Path, experiment: str = "",
                  plots: bool = True) -> tuple[pd.DataFrame, list[Path], list[str]]:
    """Everything a leaderboard writes from ``runs`` (:func:`load_runs`' frame) into ``out_dir``:
    ``leaderboard.csv``/``.md`` (with the papers' tables), the sign agreement, the occlusion
    robustness and, with ``plots``, ``plots/`` (CMC, sensitivity, robustness). Returns the board,
    the files written and :func:`agreement_lines`. ``reidbench leaderboard`` and every sweep use it."""
    published = load_published()
    board = leaderboard_sorted(join_published(aggregate(runs), published))
    paths = write_leaderboard(board, out_dir, experiment, published)
    signs, agreement = write_sign_agreement(runs, out_dir, published, markdown=paths["markdown"])
    robustness = write_robustness(runs, out_dir, markdown=paths["markdown"], plots=plots)
    written = [*paths.values(), *signs.values(), *robustness.values()]
    if plots:
        from .plots import write_plots

        written += write_plots(runs, Path(out_dir) / "plots")
    return board, written, agreement


def run_leaderboard_command(args: argparse.Namespace) -> int:
    uri = args.tracking_uri or default_tracking_uri()
    try:
        loaded = load_runs(args.experiment, uri)
    except LookupError as exc:
        print(f"reidbench leaderboard: {exc}", file=sys.stderr)
        return 2
    for reason, n in loaded.skipped.items():
        print(f"skipped {n} run(s): {reason}", file=sys.stderr)
    if loaded.runs.empty:
        print(f"reidbench leaderboard: experiment {args.experiment!r} has no finished run with test metrics",
              file=sys.stderr)
        return 1
    board, written, agreement = write_outputs(loaded.runs, args.out, args.experiment, plots=not args.no_plots)
    if args.log_to_run:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        for path in written:
            folder = "leaderboard/plots" if path.suffix == ".png" else "leaderboard"
            client.log_artifact(args.log_to_run, str(path), folder)
    print(f"{len(board)} rows from {len(loaded.runs)} runs of {args.experiment!r}")
    for line in agreement:
        print(line)
    for path in written:
        print(f"  {path}")
    return 0



# ----------------------------------------------------------------------------- sign agreement
#
# A reproduction is first judged by whether its ablations point the way the paper's do. For every
# row a paper's table compares with its full model (the paper's own method, ablation ``default``),
# ``sign_agreement`` pairs our runs of that row with our runs of the full model seed by seed (same
# setup, same benchmark), and reports the mean paired difference with its standard error beside the
# paper's difference. A row *agrees* when the two differences have the same sign; the difference
# is *beyond the seed noise* when it exceeds ``noise_se`` standard errors (2 by default; with three
# seeds that is a loose screen, not a test: the t quantile for 95 % at 2 degrees of freedom is 4.3).
# Rows whose printed numbers the text copy lost but whose direction the paper's text states are
# taken from ``CLAIMED_SIGNS``; rows where the paper shows no difference are listed, not scored.

SIGN_NOISE_SE = 2.0
SIGN_METRICS = ("mAP", "R1")
# (paper, table, method, ablation regex, benchmark, sign of (row - full model), where the paper says so)
CLAIMED_SIGNS = (
    ("profd", "Table 4", "profd", r"no_memory|global_memory_only|part_memory_only", "occluded_duke", -1,
     "Sec. 5.4: Lines 1-3 are below Line 4 (both memory banks); numbers lost in the text copy"),
    ("profd", "Table 5", "profd", r"no_align_no_div|no_div|no_align", "occluded_duke", -1,
     "Sec. 5.4: both losses together beat either alone and neither; numbers lost in the text copy"),
    ("profd", "Fig. 4", "profd", r"m_[gp]=(?!0\.2$)[0-9.]+", "occluded_duke", -1,
     "Sec. 5.4: best at m_g = m_p = 0.2 (the full model); no numbers in the text copy"),
)
SIGN_COLUMNS = ["paper", "table", "row", "method", "ablation", "dataset", "protocol", "setup", "metric",
                "published_row", "published_full", "published_diff", "paper_sign", "n_pairs", "seeds", "diff_mean",
                "diff_se", "same_sign", "beyond_noise", "verdict", "note"]


def _home_method(paper: str) -> str | None:
    return next((m for m, p in HOME_PAPER.items() if p == paper), None)


def _paired_differences(runs: pd.DataFrame, method: str, ablation: str, full_ablation: str, full_method: str,
                        dataset: str, protocol: str, metric: str) -> dict[str, pd.DataFrame]:
    """setup -> frame of (seed, row, full) for the seeds both configurations ran."""
    cols = [c for c in runs.columns if c.startswith("metrics.test/") and c.endswith(f"/{metric}")
            and PROTOCOL_ALIASES.get(c.split("/")[1], c.split("/")[1]) == protocol]
    if not cols:
        return {}
    value = runs[cols].bfill(axis=1).iloc[:, 0].astype(float)
    ablations = runs["ablation"].map(lambda a: ABLATION_ALIASES.get(a, a))
    here = runs["paper_dataset"] == dataset
    row = runs[here & (runs["method"] == method) & (ablations == ablation)].assign(value=value)
    full = runs[here & (runs["method"] == full_method) & (ablations == full_ablation)].assign(value=value)
    out = {}
    for setup, group in row.groupby("setup", sort=False):
        mine = group.dropna(subset=["value"])[["seed", "value"]]
        base = full[full["setup"] == setup].dropna(subset=["value"])[["seed", "value"]]
        pairs = mine.merge(base, on="seed", suffixes=("_row", "_full"))
        if len(pairs):
            out[setup] = pairs.sort_values("seed", key=lambda s: s.map(_seed_order))
    return out


def _comparisons(runs: pd.DataFrame, published: pd.DataFrame, metrics: tuple[str, ...]) -> list[dict]:
    """Every (paper, table, row, metric) compared with the table's full model: printed or claimed."""
    found = []
    pub = published[published["metric"].isin(metrics)]
    for (paper, table), rows in pub.groupby(["paper", "table"], sort=False):
        home = _home_method(paper)
        full = rows[(rows["method"] == home) & (rows["ablation"] == "default") & rows["value"].notna()]
        for _, r in rows[rows["value"].notna()].iterrows():
            if r["method"] == home and r["ablation"] == "default":
                continue
            ref = full[(full["dataset"] == r["dataset"]) & (full["protocol"] == r["protocol"])
                       & (full["metric"] == r["metric"])]
            if ref.empty:
                continue
            diff = float(r["value"]) - float(ref["value"].iloc[0])
            found.append({"paper": paper, "table": table, "row": r["row"], "method": r["method"],
                          "ablation": r["ablation"], "dataset": r["dataset"], "protocol": r["protocol"],
                          "metric": r["metric"], "published_row": float(r["value"]),
                          "published_full": float(ref["value"].iloc[0]), "published_diff": diff,
                          "paper_sign": int(np.sign(round(diff, 6))), "note": r["note"]})

    ablations = set(runs["ablation"].map(lambda a: ABLATION_ALIASES.get(a, a))) if len(runs) else set()
    for paper, table, method, pattern, dataset, sign, note in CLAIMED_SIGNS:
        printed = {(c["table"], c["ablation"]) for c in found if c["paper"] == paper}
        for ablation in sorted(a for a in ablations if re.fullmatch(pattern, a)):
            if (table, ablation) in printed:
                continue
            for metric in metrics:
                found.append({"paper": paper, "table": table, "row": ablation, "method": method,
                              "ablation": ablation, "dataset": dataset, "protocol": "standard", "metric": metric,
                              "published_row": np.nan, "published_full": np.nan, "published_diff": np.nan,
                              "paper_sign": sign, "note": note})
    return found


def sign_agreement(runs: pd.DataFrame, published: pd.DataFrame | None = None,
                   metrics: tuple[str, ...] = SIGN_METRICS, noise_se: float = SIGN_NOISE_SE) -> pd.DataFrame:
    """One row per (paper comparison, setup, metric) that our runs cover: the paper's difference
    (row - full model) beside our mean paired difference over seeds and its standard error,
    ``same_sign``, ``beyond_noise`` (|mean| > ``noise_se`` x SE) and a ``verdict``
    (see the comment above :data:`SIGN_NOISE_SE`). ``runs``: :func:`load_runs`' frame."""
    pub = load_published() if published is None else published
    rows = []
    for c in _comparisons(runs, pub, metrics):
        home = _home_method(c["paper"])
        for setup, pairs in _paired_differences(runs, c["method"], c["ablation"], "default", home, c["dataset"],
                                                c["protocol"], c["metric"]).items():
            d = (pairs["value_row"] - pairs["value_full"]).to_numpy(dtype=float)
            mean = float(d.mean())
            se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan")
            beyond = bool(not math.isnan(se) and abs(mean) > noise_se * se)
            same = bool(c["paper_sign"] != 0 and np.sign(mean) == c["paper_sign"])
            if c["paper_sign"] == 0:
                verdict = "paper: no difference"
            elif same:
                verdict = "agrees" if beyond else "agrees (within noise)"
            else:
                verdict = "disagrees" if beyond else "disagrees (within noise)"
            rows.append({**c, "setup": setup, "n_pairs": len(d), "seeds": ",".join(map(str, pairs["seed"])),
                         "diff_mean": mean, "diff_se": se, "same_sign": same, "beyond_noise": beyond,
                         "verdict": verdict})
    return pd.DataFrame(rows, columns=SIGN_COLUMNS)


def agreement_summary(agreement: pd.DataFrame) -> pd.DataFrame:
    """Per (paper, table, setup, metric) and overall per (setup, metric): scored rows (the paper
    shows a difference), the share with the paper's sign and the share also beyond the noise."""
    scored = agreement[agreement["paper_sign"] != 0]
    parts = []
    for keys, label in ((["paper", "table", "setup", "metric"], None), (["setup", "metric"], "all")):
        if scored.empty:
            break
        g = scored.groupby(keys, sort=False).agg(rows=("same_sign", "size"), same_sign=("same_sign", "mean"),
                                                 agrees_beyond_noise=("verdict", lambda v: (v == "agrees").mean()))
        g = g.reset_index()
        if label:
            g.insert(0, "table", label)
            g.insert(0, "paper", label)
        parts.append(g)
    columns = ["paper", "table", "setup", "metric", "rows", "same_sign", "agrees_beyond_noise"]
    return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)


def agreement_lines(summary: pd.DataFrame) -> list[str]:
    """What a sweep or ``reidbench leaderboard`` prints: the overall share per setup and metric."""
    overall = summary[summary["paper"] == "all"]
    return [f"sign agreement ({r['setup']}, {r['metric']}): {r['same_sign']:.0%} of {int(r['rows'])} rows have the "
            f"paper's sign, {r['agrees_beyond_noise']:.0%} also beyond the seed noise" for _, r in overall.iterrows()]


def agreement_markdown(agreement: pd.DataFrame, summary: pd.DataFrame, noise_se: float = SIGN_NOISE_SE) -> list[str]:
    """The leaderboard's "Sign agreement" section."""
    if agreement.empty:
        return []
    lines = ["", "## Sign agreement with the papers' ablations", "",
             "Each row a paper compares with its full model: the paper's difference (row − full model) and ours, "
             f"the mean paired difference over seeds ± its standard error; *beyond noise*: |mean| > {noise_se:g} SE. "
             "Rows without printed numbers take the direction the paper's text states.", ""]
    header = ["paper", "table", "row", "ablation", "benchmark", "setup", "metric", "paper Δ", "our Δ ± SE", "seeds",
              "verdict"]
    body = []
    for _, r in agreement.iterrows():
        paper = (f"{r['published_diff']:+.2f}" if not math.isnan(r["published_diff"])
                 else {1: "> 0 (text)", -1: "< 0 (text)"}.get(r["paper_sign"], "0"))
        ours = f"{r['diff_mean']:+.2f}" + ("" if math.isnan(r["diff_se"]) else f" ± {r['diff_se']:.2f}")
        body.append([PAPERS.get(r["paper"], r["paper"]), r["table"], r["row"], f"{r['method']}/{r['ablation']}",
                     r["dataset"], r["setup"], r["metric"], paper, ours, str(r["n_pairs"]), r["verdict"]])
    lines += _table(header, body)
    lines += ["", "Share of scored rows (the paper shows a difference):", ""]
    lines += _table(["paper", "table", "setup", "metric", "rows", "same sign", "same sign, beyond noise"],
                    [[PAPERS.get(r["paper"], r["paper"]), r["table"], r["setup"], r["metric"], str(int(r["rows"])),
                      f"{r['same_sign']:.0%}", f"{r['agrees_beyond_noise']:.0%}"] for _, r in summary.iterrows()])
    return lines


def write_sign_agreement(runs: pd.DataFrame, out_dir: str | Path, published: pd.DataFrame | None = None,
                         markdown: str | Path | None = None) -> tuple[dict[str, Path], list[str]]:
    """Write ``sign_agreement.csv`` into ``out_dir`` and append the section to ``markdown`` (the
    leaderboard's Markdown, when given); return the paths written and :func:`agreement_lines`."""
    agreement = sign_agreement(runs, published)
    summary = agreement_summary(agreement)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "sign_agreement.csv"
    agreement.to_csv(path, index=False, float_format="%.4f")
    paths = {"sign_agreement": path}
    if markdown is not None and not agreement.empty:
        with open(markdown, "a", encoding="utf-8") as fh:
            fh.write("\n".join(agreement_markdown(agreement, summary)) + "\n")
    return paths, agreement_lines(summary)


# ----------------------------------------------------------------------------- occlusion robustness

ROBUSTNESS_KEYS = ("visible_mean", "from", "to", "queries", "mAP", "R1")


def robustness_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs' visibility curves (``test/<protocol>/visibility/bin<i>/<key>``, logged on
    benchmarks that record each query's visible body fraction): one row per (method,
    ablation, dataset, protocol, setup, bin) with the seeds' mean of every key and the
    sample standard deviation of mAP and R1."""
    pattern = r"^metrics\.test/([^/]+)/visibility/bin(\d+)/([^/]+)$"
    cols = [c for c in runs.columns if re.match(pattern, c)] if len(runs) else []
    columns = [*GROUP, "bin", "n_seeds", *[f"{k}_mean" for k in ROBUSTNESS_KEYS], "mAP_std", "R1_std"]
    if not cols:
        return pd.DataFrame(columns=columns)
    long = runs.melt(id_vars=["method", "ablation", "dataset", "setup", "seed"], value_vars=cols,
                     var_name="column", value_name="value").dropna(subset=["value"])
    parts = long["column"].str.extract(pattern)
    long = long.assign(protocol=parts[0], bin=parts[1].astype(int), key=parts[2])
    wide = long.pivot_table(index=["method", "ablation", "dataset", "protocol", "setup", "bin", "seed"],
                            columns="key", values="value", aggfunc="first").reset_index()
    rows = []
    for key, group in wide.groupby(["method", "ablation", "dataset", "protocol", "setup", "bin"], sort=True):
        row = dict(zip(["method", "ablation", "dataset", "protocol", "setup", "bin"], key), n_seeds=len(group))
        for k in ROBUSTNESS_KEYS:
            row[f"{k}_mean"] = float(group[k].mean()) if k in group else np.nan
        for k in ("mAP", "R1"):
            row[f"{k}_std"] = float(group[k].std(ddof=1)) if k in group and len(group) > 1 else np.nan
        rows.append(row)
    table = pd.DataFrame(rows, columns=columns)
    # Runs logged before the trainer skipped queries of one visibility (synthetic_cc's) carry
    # curves whose bins all span the same value: nothing to compare, so they are left out.
    flat = table.groupby(["dataset", "protocol", "setup"])[["from_mean", "to_mean"]].transform(
        lambda v: v.max() - v.min())
    return table[(flat["from_mean"] > 0) | (flat["to_mean"] > 0)].reset_index(drop=True)


def robustness_markdown(table: pd.DataFrame) -> list[str]:
    """The leaderboard's "Occlusion robustness" section: test mAP per visibility bin, one row
    per reproduced configuration, bins from the least visible queries to the most."""
    if table.empty:
        return []
    lines = ["", "## Occlusion robustness", "",
             "Test mAP (mean ± std over seeds) over equal-count bins of the queries' visible body fraction, "
             "least visible first; a method built for occlusion should lose less towards the left.", ""]
    for (dataset, protocol, setup), group in table.groupby(["dataset", "protocol", "setup"], sort=True):
        bins = sorted(group["bin"].unique())
        edges = group.groupby("bin")[["from_mean", "to_mean"]].mean()
        header = ["method", "ablation", "seeds",
                  *[f"visible {edges.loc[b, 'from_mean']:.2f}-{edges.loc[b, 'to_mean']:.2f}" for b in bins]]
        body = []
        for (method, ablation), rows in group.groupby(["method", "ablation"], sort=True):
            cells = {int(r["bin"]): _ours(r["mAP_mean"], r["mAP_std"]) for _, r in rows.iterrows()}
            body.append([method, ablation, str(int(rows["n_seeds"].max())), *[cells.get(b, "—") for b in bins]])
        lines += [f"### {dataset} ({protocol}), setup {setup}", ""] + _table(header, body) + [""]
    return lines


def write_robustness(runs: pd.DataFrame, out_dir: str | Path, markdown: str | Path | None = None,
                     plots: bool = True) -> dict[str, Path]:
    """``robustness.csv`` (:func:`robustness_table`), its Markdown section appended to
    ``markdown`` and, with ``plots``, one mAP-against-visibility figure per benchmark and setup."""
    table = robustness_table(runs)
    if table.empty:
        return {}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"robustness": out / "robustness.csv"}
    table.to_csv(paths["robustness"], index=False, float_format="%.4f")
    if markdown is not None:
        with open(markdown, "a", encoding="utf-8") as fh:
            fh.write("\n".join(robustness_markdown(table)) + "\n")
    if plots:
        from .plots import write_robustness_plots

        for i, path in enumerate(write_robustness_plots(table, out / "plots")):
            paths[f"robustness_plot_{i}"] = path
    return paths
