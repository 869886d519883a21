"""ProFD ablations: Tables 3 (attention), 4 (memory banks), 5 (losses) and the Fig. 4 momentum grid.

    python sweeps/ablation_profd.py --smoke            # minutes on a laptop CPU
    ray submit cluster.yaml sweeps/ablation_profd.py -- --datasets occluded_duke --root /data --preset paper
"""

import sys

from reidbench.harness.tune import LAST_EPOCH, Trial, ablation_grid, param_grid, sweep_main

MOMENTA = (0.1, 0.2, 0.5, 0.9, 0.99)


def trials(args) -> list[Trial]:
    rows = ablation_grid("profd", {
        # Table 3: decoder attention
        "no_attention": {"attention": "none"},
        "sea_only": {"attention": "sea"},
        "spa_only": {"attention": "spa"},
        # Table 4: memory banks
        "no_memory": {"memory_bank": "none"},
        "global_memory_only": {"memory_bank": "global"},
        "part_memory_only": {"memory_bank": "part"},
        # Table 5: losses
        "no_align": {"use_align": False},
        "no_div": {"use_div": False},
        "no_align_no_div": {"use_align": False, "use_div": False},
        # the full model (every table's last row)
        "full": {},
    })
    if args.smoke:
        return rows
    # Fig. 4: each momentum varied with the other at the paper's 0.2
    return rows + param_grid("profd", {"m_g": MOMENTA}) + param_grid("profd", {"m_p": MOMENTA})


if __name__ == "__main__":
    sys.exit(sweep_main(trials, ["synthetic_occluded"], __doc__.splitlines()[0], "ablation_profd", defaults=LAST_EPOCH))
