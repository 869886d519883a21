"""CCAF ablations: Table 3 (B / +I2T / +I2I / +CFM), Table 4 (text-prompt losses) and the Fig. 4 λ1, λ2 grid.

    python sweeps/ablation_ccaf.py --smoke            # Tables 3 and 4 + a 3-point λ1/λ2 check, tiny preset, one seed
    ray submit cluster.yaml sweeps/ablation_ccaf.py -- --datasets prcc,ltcc --root /data --preset paper

Row names are the leaderboard's published ones (``reidbench/data/published.csv``); the
full model is ``default``, as a plain ``reidbench train`` run is tagged. Fig. 4 varies
one of λ1 (L_con) and λ2 (L_dis) with the other at the paper's value (λ1 = 0.1, λ2 = 1);
the figure's exact values are not printed, so each axis spans a decade either side of
the chosen value. The centre of each axis is the ``default`` row itself (not trained
twice), so each axis is rows ``lambda_con=V`` / ``lambda_dis=V`` plus ``default``. The
sweep writes the leaderboard (Tables 3 and 4 in the paper's shape) and one sensitivity
plot per λ (``<output-dir>/leaderboard/ablation_ccaf/plots/sensitivity_ccaf_*_lambda_{con,dis}.png``).
``--smoke`` trains every table row and three points per λ (the centre and one value on
either side), enough to draw both plots; its numbers mean nothing.
"""

import sys

from reidbench.harness.tune import LAST_EPOCH, ablation_grid, param_grid, sweep_main

LAMBDA_CON = (0.01, 0.05, 0.1, 0.5, 1.0)  # λ1, paper 0.1
LAMBDA_DIS = (0.1, 0.5, 1.0, 2.0, 10.0)  # λ2, paper 1
PAPER_LAMBDAS = {"lambda_con": 0.1, "lambda_dis": 1.0}
SMOKE_LAMBDAS = {"lambda_con": (0.01, 1.0), "lambda_dis": (0.1, 10.0)}  # with the centre: three points each

NO_CFM = {"use_cfm": False}
ONEHOT = {"cfm_supervision": "onehot"}


def trials(args):
    rows = ablation_grid("ccaf", {
        # Table 3
        "baseline": {"use_i2t": False, "use_i2i": False, **NO_CFM},  # B: L_ce + L_tri on E_v only
        "no_i2i_no_cfm": {"use_i2i": False, **NO_CFM},  # B + I2T
        "no_cfm": NO_CFM,  # B + I2T + I2I
        "default": {},  # B + I2T + I2I + CFM (both tables' first / last row; both λ axes' centre)
        # Table 4 (each row removes one more text-prompt loss)
        "onehot_cfm": ONEHOT,  # r/p L^c_i2tce
        "onehot_cfm_no_shield_text": {**ONEHOT, "use_shield_i2t": False},  # and w/o L^s_i2tce
        "no_text_prompts": {**ONEHOT, "use_shield_i2t": False, "use_i2t": False},  # and w/o L_i2tce
    })
    axes = SMOKE_LAMBDAS if args.smoke else {"lambda_con": LAMBDA_CON, "lambda_dis": LAMBDA_DIS}
    for key, values in axes.items():
        rows += param_grid("ccaf", {key: [v for v in values if v != PAPER_LAMBDAS[key]]})
    return rows


if __name__ == "__main__":
    sys.exit(sweep_main(trials, ["synthetic_cc"], __doc__.splitlines()[0], "ablation_ccaf", defaults=LAST_EPOCH))
