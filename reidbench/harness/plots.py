"""Plots of a sweep: hyperparameter sensitivity (like ProFD Fig. 4) and CMC curves.

PNG files drawn on matplotlib's Agg canvas through ``matplotlib.figure.Figure`` (no pyplot
global state, no display needed), and logged to MLflow as run artifacts when a run id
is given (``MlflowClient.log_figure``).

Inputs are the per-run frame of ``leaderboard.load_runs`` (columns ``method``,
``ablation``, ``dataset``, ``seed``, ``setup``, ``params.<key>``,
``metrics.test/<protocol>/<metric>``). Points are the mean over seeds with the sample
standard deviation as a band (error bars for the CMC).

``write_plots`` (what ``reidbench leaderboard`` draws) finds the swept hyperparameters by
itself: within one (method, dataset, setup), a numeric param with at least three values
is a sweep axis; the other params that vary (other axes, ablation switches) are held at
their most common value, so a one-factor-at-a-time grid such as ProFD's m_g / m_p
(each swept with the other at 0.2) gives one curve per factor; an axis whose largest
value is ``LOG_AXIS_RATIO`` (20) times its smallest or more (CCAF's λ grid, a decade
either side of its centre) is drawn on a log scale; two axes that the runs cross in full
(BDAM's GradNorm α x λ) also get a heatmap of mAP (``grid_*.png``). Its CMC plots use the
ranks the runs log (R1, R5, R10); ``cmc_figure`` / ``plot_cmc`` draw full curves
(``RankResult.cmc``) when the caller has them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .leaderboard import NON_SETTINGS

SWEEP_MIN_VALUES = 3
LOG_AXIS_RATIO = 20.0  # a swept axis whose largest value is this many times its smallest is drawn in log scale


def _figure(width: float = 6.0, height: float = 4.0):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig, out_path: str | Path, run_id: str | None, tracking_uri: str | None, artifact_dir: str) -> Path:
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    if run_id:
        from mlflow.tracking import MlflowClient

        MlflowClient(tracking_uri=tracking_uri).log_figure(run_id, fig, f"{artifact_dir}/{out.name}")
    return out


def _param_label(column: str) -> str:
    return column[len("params."):] if column.startswith("params.") else column


def _numeric(values: pd.Series) -> pd.Series | None:
    converted = pd.to_numeric(values, errors="coerce")
    return converted if converted.notna().all() else None


# ----------------------------------------------------------------------------- sensitivity

def sensitivity_table(runs: pd.DataFrame, param: str, protocol: str,
                      metrics: Sequence[str] = ("R1", "mAP")) -> pd.DataFrame:
    """Mean and std over seeds of ``metrics`` at each value of ``param`` (a ``params.*`` column)."""
    if param not in runs:
        raise KeyError(f"no param column {param!r}; params logged: "
                       f"{', '.join(sorted(c for c in runs.columns if c.startswith('params.'))) or '(none)'}")
    cols = {m: f"metrics.test/{protocol}/{m}" for m in metrics}
    missing = [c for c in cols.values() if c not in runs]
    if missing:
        raise KeyError(f"no metric column(s) {missing}; protocol {protocol!r} not logged by these runs")
    frame = runs[[param, *cols.values()]].dropna(subset=[param])
    numeric = _numeric(frame[param])
    frame = frame.assign(_value=numeric if numeric is not None else frame[param])
    rows = []
    for value, group in frame.groupby("_value", sort=True):
        row = {"value": value, "n": int(group[cols[metrics[0]]].notna().sum())}
        for m, col in cols.items():
            v = group[col].astype(float).dropna()
            row[f"{m}_mean"] = float(v.mean()) if len(v) else np.nan
            row[f"{m}_std"] = float(v.std(ddof=1)) if len(v) > 1 else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def sensitivity_figure(table: pd.DataFrame, param: str, title: str = "", metrics: Sequence[str] = ("R1", "mAP")):
    """R1 and mAP (percent) against the swept value: mean line, ±1 std band."""
    fig = _figure()
    ax = fig.add_subplot()
    numeric = _numeric(table["value"]) is not None
    x = table["value"].astype(float).to_numpy() if numeric else np.arange(len(table))
    for m, marker in zip(metrics, "os^vD"):
        mean = table[f"{m}_mean"].to_numpy(dtype=float)
        std = np.nan_to_num(table[f"{m}_std"].to_numpy(dtype=float))
        ax.plot(x, mean, marker=marker, label=m)
        ax.fill_between(x, mean - std, mean + std, alpha=0.2)
    if not numeric:
        ax.set_xticks(x, [str(v) for v in table["value"]])
    elif x.min() > 0 and x.max() / x.min() >= LOG_AXIS_RATIO:
        # values a decade or more apart either side of a centre (CCAF's λ grid): evenly spaced on a log axis
        ax.set_xscale("log")
        ax.set_xticks(x, [f"{v:g}" for v in x])
        ax.minorticks_off()
    elif len(x) <= 12:
        ax.set_xticks(x, [f"{v:g}" for v in x])  # the swept values, not 1.5 between depths 1 and 2
    ax.set_xlabel(_param_label(param))
    ax.set_ylabel("%")
    ax.grid(True, alpha=0.3)
    ax.legend()
    seeds = sorted(set(table["n"]))
    over = f"mean ± std over {'/'.join(map(str, seeds))} seed{'' if seeds == [1] else 's'}"
    ax.set_title(f"{title}\n({over})" if title else over, fontsize=9)
    return fig


def plot_sensitivity(runs: pd.DataFrame, param: str, out_path: str | Path, protocol: str = "standard",
                     metrics: Sequence[str] = ("R1", "mAP"), title: str = "", run_id: str | None = None,
                     tracking_uri: str | None = None) -> Path:
    """Write the sensitivity PNG of ``param`` (and log it to ``run_id`` when given)."""
    table = sensitivity_table(runs, param, protocol, metrics)
    if table.empty:
        raise ValueError(f"no run has both {param!r} and test/{protocol} metrics")
    return _save(sensitivity_figure(table, param, title, metrics), out_path, run_id, tracking_uri, "plots")


def swept_params(runs: pd.DataFrame) -> list[str]:
    """Numeric ``params.*`` columns with at least three values among ``runs`` (seed and paths excluded)."""
    found = []
    for col in sorted(c for c in runs.columns if c.startswith("params.")):
        key = _param_label(col)
        if key.startswith(NON_SETTINGS) or key in NON_SETTINGS:
            continue
        values = runs[col].dropna()
        numeric = _numeric(values)
        if numeric is not None and numeric.nunique() >= SWEEP_MIN_VALUES:
            found.append(col)
    return found


def _varying(runs: pd.DataFrame) -> list[str]:
    return [c for c in runs.columns if c.startswith("params.") and not _param_label(c).startswith(NON_SETTINGS)
            and _param_label(c) not in NON_SETTINGS and runs[c].nunique(dropna=True) > 1]


def one_factor_runs(runs: pd.DataFrame, param: str) -> pd.DataFrame:
    """The runs where every other varying param sits at its most common value."""
    keep = pd.Series(True, index=runs.index)
    for col in _varying(runs):
        if col != param:
            keep &= runs[col] == runs[col].mode(dropna=True).iloc[0]
    return runs[keep]


def grid_table(runs: pd.DataFrame, x: str, y: str, protocol: str, metric: str = "mAP") -> pd.DataFrame:
    """Mean over seeds of ``metric`` on a two-parameter grid: rows ``y`` values, columns ``x``
    values (NaN where the grid has no run), e.g. BDAM's GradNorm α x λ."""
    col = f"metrics.test/{protocol}/{metric}"
    missing = [c for c in (x, y, col) if c not in runs]
    if missing:
        raise KeyError(f"no column(s) {missing} among the runs")
    frame = runs[[x, y, col]].dropna()
    frame = frame.assign(_x=pd.to_numeric(frame[x]), _y=pd.to_numeric(frame[y]), _v=frame[col].astype(float))
    return frame.pivot_table(index="_y", columns="_x", values="_v", aggfunc="mean").rename_axis(
        index=_param_label(y), columns=_param_label(x))


def grid_figure(table: pd.DataFrame, title: str = "", metric: str = "mAP"):
    """A heatmap of ``grid_table``, each cell annotated with its value."""
    fig = _figure()
    ax = fig.add_subplot()
    values = table.to_numpy(dtype=float)
    image = ax.imshow(values, cmap="viridis", aspect="auto", origin="lower")
    ax.set_xticks(range(table.shape[1]), [f"{v:g}" for v in table.columns])
    ax.set_yticks(range(table.shape[0]), [f"{v:g}" for v in table.index])
    ax.set_xlabel(table.columns.name)
    ax.set_ylabel(table.index.name)
    for (i, j), v in np.ndenumerate(values):
        if not np.isnan(v):
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", color="white", fontsize=8)
    fig.colorbar(image, ax=ax, label=f"{metric} (%), mean over seeds")
    ax.set_title(title, fontsize=9)
    return fig


def grid_pairs(runs: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """Pairs of swept params that the runs cross (every combination present, the other
    varying params at their most common value): ``(x, y, those runs)``."""
    pairs = []
    swept = swept_params(runs)
    for i, x in enumerate(swept):
        for y in swept[i + 1:]:
            keep = pd.Series(True, index=runs.index)
            for col in _varying(runs):
                if col not in (x, y):
                    keep &= runs[col] == runs[col].mode(dropna=True).iloc[0]
            subset = runs[keep].dropna(subset=[x, y])
            xs, ys = subset[x].nunique(), subset[y].nunique()
            if xs >= 2 and ys >= 2 and len(subset[[x, y]].drop_duplicates()) == xs * ys:
                pairs.append((x, y, subset))
    return pairs


# ----------------------------------------------------------------------------- CMC

def cmc_figure(curves: Mapping[str, Sequence[float] | Mapping[int, float]], title: str = "",
               errors: Mapping[str, Mapping[int, float]] | None = None, percent: bool | None = None):
    """CMC curves: ``label -> values at ranks 1..K`` (a sequence, e.g. ``RankResult.cmc``) or
    ``label -> {rank: value}``. Fractions are shown in percent (``percent=None`` decides by
    the largest value: <= 1 means fractions)."""
    fig = _figure()
    ax = fig.add_subplot()
    for label, curve in curves.items():
        if isinstance(curve, Mapping):
            ranks = np.array(sorted(curve), dtype=float)
            values = np.array([curve[r] for r in sorted(curve)], dtype=float)
        else:
            values = np.asarray(curve, dtype=float)
            ranks = np.arange(1, len(values) + 1, dtype=float)
        as_fraction = percent is False or (percent is None and np.nanmax(values) <= 1.0)
        scale = 100.0 if as_fraction else 1.0
        err = None
        if errors and label in errors:
            err = np.array([errors[label].get(int(r), 0.0) for r in ranks], dtype=float) * scale
        ax.errorbar(ranks, values * scale, yerr=err, marker="o" if len(ranks) <= 20 else None, markersize=4,
                    capsize=3, label=label)
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    return fig


def plot_cmc(curves: Mapping[str, Sequence[float] | Mapping[int, float]], out_path: str | Path, title: str = "",
             errors: Mapping[str, Mapping[int, float]] | None = None, run_id: str | None = None,
             tracking_uri: str | None = None) -> Path:
    """Write the CMC PNG (and log it to ``run_id`` when given)."""
    return _save(cmc_figure(curves, title, errors), out_path, run_id, tracking_uri, "plots")


def sweep_cmc(runs: pd.DataFrame, protocol: str) -> tuple[dict, dict]:
    """Per (method, ablation): mean and std over seeds of the logged ranks (R1, R5, R10)."""
    curves, errors = {}, {}
    ranks = {r: f"metrics.test/{protocol}/R{r}" for r in (1, 5, 10)}
    ranks = {r: c for r, c in ranks.items() if c in runs}
    for (method, ablation), group in runs.groupby(["method", "ablation"], sort=True):
        means = {r: group[c].astype(float).mean() for r, c in ranks.items() if group[c].notna().any()}
        if len(means) >= 2:
            label = f"{method}/{ablation} (n={int(group[ranks[1]].notna().sum())})"
            curves[label] = means
            errors[label] = {r: float(np.nan_to_num(group[ranks[r]].astype(float).std(ddof=1))) for r in means}
    return curves, errors


# ----------------------------------------------------------------------------- all plots of a sweep

def _slug(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", "_".join(parts)).strip("_")


def write_plots(runs: pd.DataFrame, out_dir: str | Path, run_id: str | None = None,
                tracking_uri: str | None = None) -> list[Path]:
    """CMC plots per (dataset, protocol, setup) and sensitivity plots of every detected sweep axis."""
    from .leaderboard import protocols

    written: list[Path] = []
    out = Path(out_dir)
    for protocol in protocols(runs):
        r1 = f"metrics.test/{protocol}/R1"
        have = runs[runs[r1].notna()]
        for (dataset, setup), group in have.groupby(["dataset", "setup"], sort=True):
            curves, errors = sweep_cmc(group, protocol)
            if curves:
                path = out / f"{_slug('cmc', dataset, protocol, setup)}.png"
                written.append(plot_cmc(curves, path, f"CMC at the logged ranks: {dataset} ({protocol}), setup {setup}",
                                        errors, run_id, tracking_uri))
            for method, mgroup in group.groupby("method", sort=True):
                for param in swept_params(mgroup):
                    subset = one_factor_runs(mgroup, param)
                    if subset[param].nunique() < SWEEP_MIN_VALUES:
                        continue
                    path = out / f"{_slug('sensitivity', method, dataset, protocol, setup, _param_label(param))}.png"
                    title = f"{method} on {dataset} ({protocol}), setup {setup}"
                    written.append(plot_sensitivity(subset, param, path, protocol, title=title, run_id=run_id,
                                                    tracking_uri=tracking_uri))
                for x, y, subset in grid_pairs(mgroup):
                    path = out / f"{_slug('grid', method, dataset, protocol, setup, _param_label(x), _param_label(y))}.png"
                    title = f"{method} on {dataset} ({protocol}), setup {setup}"
                    written.append(_save(grid_figure(grid_table(subset, x, y, protocol), title), path, run_id,
                                         tracking_uri, "plots"))
    return written


# ----------------------------------------------------------------------------- occlusion robustness

def robustness_figure(table: pd.DataFrame, title: str = ""):
    """Test mAP against the mean visible body fraction of each query bin, one line per
    (method, ablation), error bars the standard deviation over seeds."""
    fig = _figure()
    ax = fig.add_subplot()
    for (method, ablation), rows in table.groupby(["method", "ablation"], sort=True):
        rows = rows.sort_values("bin")
        label = method if ablation == "default" else f"{method}/{ablation}"
        ax.errorbar(rows["visible_mean_mean"], rows["mAP_mean"], yerr=rows["mAP_std"].fillna(0.0), marker="o",
                    capsize=3, label=label)
    ax.set_xlabel("visible body fraction of the query (bin mean)")
    ax.set_ylabel("test mAP (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def write_robustness_plots(table: pd.DataFrame, out_dir: str | Path, run_id: str | None = None,
                           tracking_uri: str | None = None) -> list[Path]:
    """One robustness curve per (dataset, protocol, setup) of ``leaderboard.robustness_table``."""
    written = []
    for (dataset, protocol, setup), group in table.groupby(["dataset", "protocol", "setup"], sort=True):
        fig = robustness_figure(group, f"occlusion robustness: {dataset} ({protocol}), setup {setup}")
        path = Path(out_dir) / f"{_slug('robustness', dataset, protocol, setup)}.png"
        written.append(_save(fig, path, run_id, tracking_uri, "plots"))
    return written
