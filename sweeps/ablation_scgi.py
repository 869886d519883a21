"""CLIP-SCGI ablations: Table III (CGI / CFF), Table IV (CFF's query replaced by image features), the fixed-sentence control and the Fig. 4 depth and query-count grids.

    python sweeps/ablation_scgi.py --smoke            # the table rows, one seed, tiny preset
    ray submit cluster.yaml sweeps/ablation_scgi.py -- --datasets market1501 --root /data --preset paper

Row names match ``reidbench/data/published.csv`` (``default``, ``no_cff``, ``no_cgi``,
``replace_q``), so the leaderboard sets the paper's numbers beside them;
``fixed_caption`` trains with every caption replaced by "a photo of a person" (how much
the synthesized captions themselves bring; not in the paper). Fig. 4 varies one axis
with the other at the paper's choice (depth 1, K = 2): rows ``cgi_depth=D`` and
``num_queries=K``.
"""

import sys

from reidbench.harness.tune import Trial, ablation_grid, param_grid, sweep_main

DEPTHS = (1, 2, 3, 4, 5, 6)
QUERIES = (1, 2, 4, 8)


def trials(args) -> list[Trial]:
    rows = ablation_grid("clip_scgi", {
        # Table III (No.3, the full model, is every table's "default" row)
        "no_cff": {"use_cff": False},
        "no_cgi": {"use_cgi": False},
        "default": {},
        # Table IV
        "replace_q": {"cff_query": "image"},
        # captions replaced by one fixed sentence
        "fixed_caption": {"caption_source": "fixed"},
    })
    if args.smoke:
        return rows
    return rows + param_grid("clip_scgi", {"cgi_depth": DEPTHS}) + param_grid("clip_scgi", {"num_queries": QUERIES})


if __name__ == "__main__":
    sys.exit(sweep_main(trials, ["synthetic_market", "synthetic_occluded"], __doc__.splitlines()[0],
                        "ablation_scgi"))
