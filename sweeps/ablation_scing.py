"""SCING ablations: Table 3 (CLIP-ReID / + CoCoOp meta-net / + SVIP / + SVIP + PDCA) and the lambda, gamma, L, M grids.

    python sweeps/ablation_scing.py --smoke            # Table 3's rows, tiny preset, one seed: minutes on a CPU
    ray submit cluster.yaml sweeps/ablation_scing.py -- --datasets occluded_duke --root /data --preset paper

The paper gives no values for lambda, gamma, L or M; each grid varies one of them
around the defaults (lambda = gamma = 1, L = 4, M = 2), the others fixed.
"""

import sys

from reidbench.harness.tune import LAST_EPOCH, Trial, ablation_grid, param_grid, sweep_main

LAMBDAS = (0.1, 0.5, 1.0, 2.0, 5.0)
GAMMAS = (0.1, 0.5, 1.0, 2.0)
PROMPT_LENGTHS = (2, 4, 8, 16)  # L, with M = L // 2
FUSED = (1, 2, 3, 4)  # M, with L = 4


def trials(args) -> list[Trial]:
    rows = ablation_grid("scing", {
        # Table 3 (names as the leaderboard's published rows)
        "baseline": {"fusion": "none", "use_pdca": False},  # CLIP-ReID: static prompts
        "metanet": {"fusion": "metanet", "use_pdca": False},  # + CoCoOp meta-net
        "no_pdca": {"fusion": "svip", "use_pdca": False},  # + SVIP
        "full": {},  # + SVIP + PDCA
    })
    if args.smoke:
        return rows
    return (rows
            + param_grid("scing", {"lambda_con": LAMBDAS})
            + param_grid("scing", {"gamma": GAMMAS})
            + [Trial("scing", f"n_prompt={n}", {"n_prompt": n, "n_fused": n // 2}) for n in PROMPT_LENGTHS]
            + param_grid("scing", {"n_fused": FUSED}))


if __name__ == "__main__":
    sys.exit(sweep_main(trials, ["synthetic_occluded"], __doc__.splitlines()[0], "ablation_scing", defaults=LAST_EPOCH))
