"""CCAF ablations: Table 3 (B / +I2T / +I2I / +CFM), Table 4 (text-prompt losses) and the Fig. 4 λ1, λ2 grid.

    python sweeps/ablation_ccaf.py --smoke            # Tables 3 and 4, tiny preset, one seed
    ray submit cluster.yaml sweeps/ablation_ccaf.py -- --datasets prcc,ltcc --root /data --preset paper

Row names are the leaderboard's published ones (``reidbench/data/published.csv``).
Fig. 4 varies one of λ1 (L_con) and λ2 (L_dis) with the other at the paper's value
(λ1 = 0.1, λ2 = 1); the figure's exact values are not printed, so each axis spans a
decade either side of the chosen value.
"""

import sys

from reidbench.harness.tune import LAST_EPOCH, ablation_grid, param_grid, sweep_main

LAMBDA_CON = (0.01, 0.05, 0.1, 0.5, 1.0)  # λ1, paper 0.1
LAMBDA_DIS = (0.1, 0.5, 1.0, 2.0, 10.0)  # λ2, paper 1

NO_CFM = {"use_cfm": False}
ONEHOT = {"cfm_supervision": "onehot"}


def trials(args):
    rows = ablation_grid("ccaf", {
        # Table 3
        "baseline": {"use_i2t": False, "use_i2i": False, **NO_CFM},  # B: L_ce + L_tri on E_v only
        "no_i2i_no_cfm": {"use_i2i": False, **NO_CFM},  # B + I2T
        "no_cfm": NO_CFM,  # B + I2T + I2I
        "full": {},  # B + I2T + I2I + CFM (both tables' first / last row)
        # Table 4 (each row removes one more text-prompt loss)
        "onehot_cfm": ONEHOT,  # r/p L^c_i2tce
        "onehot_cfm_no_shield_text": {**ONEHOT, "use_shield_i2t": False},  # and w/o L^s_i2tce
        "no_text_prompts": {**ONEHOT, "use_shield_i2t": False, "use_i2t": False},  # and w/o L_i2tce
    })
    if args.smoke:
        return rows
    return rows + param_grid("ccaf", {"lambda_con": LAMBDA_CON}) + param_grid("ccaf", {"lambda_dis": LAMBDA_DIS})


if __name__ == "__main__":
    sys.exit(sweep_main(trials, ["synthetic_cc"], __doc__.splitlines()[0], "ablation_ccaf", defaults=LAST_EPOCH))
