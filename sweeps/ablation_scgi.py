"""CLIP-SCGI ablations: Table III (CGI / CFF), Table IV (CFF's query replaced by image features), the fixed-sentence control and the Fig. 4 depth and query-count grids.

    python sweeps/ablation_scgi.py --smoke            # the table rows + 3 depths and 3 K, one seed, tiny preset
    ray submit cluster.yaml sweeps/ablation_scgi.py -- --datasets market1501 --root /data --preset paper

Row names match ``reidbench/data/published.csv`` (``default``, ``no_cff``, ``no_cgi``,
``replace_q``), so the leaderboard sets the paper's numbers beside them;
``fixed_caption`` trains with every caption replaced by "a photo of a person" (how much
the synthesized captions themselves bring; not in the paper). Fig. 4 varies one axis
with the other at the paper's choice (depth 1, K = 2): rows ``cgi_depth=D`` and
``num_queries=K``, the centre of both axes being the ``default`` row itself (not trained
twice). The sweep writes the leaderboard (Tables III and IV in the paper's shape) and
one sensitivity plot per axis and dataset
(``<output-dir>/leaderboard/ablation_scgi/plots/sensitivity_clip_scgi_*_{cgi_depth,num_queries}.png``).
Every run keeps its last epoch (``data.val_fraction=0``: the paper's practice, and held-out
training images are a poor validation set for the occluded benchmark; README). ``--smoke``
trains the table rows and three points per axis (depth 1-3, K 1/2/4);
its numbers mean nothing.
"""

import sys

from reidbench.harness.tune import LAST_EPOCH, Trial, ablation_grid, param_grid, sweep_main

DEPTHS = (1, 2, 3, 4, 5, 6)
QUERIES = (1, 2, 4, 8)
PAPER_CHOICE = {"cgi_depth": 1, "num_queries": 2}
SMOKE_AXES = {"cgi_depth": (2, 3), "num_queries": (1, 4)}  # with the centre: three points each


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
    axes = SMOKE_AXES if args.smoke else {"cgi_depth": DEPTHS, "num_queries": QUERIES}
    for key, values in axes.items():
        rows += param_grid("clip_scgi", {key: [v for v in values if v != PAPER_CHOICE[key]]})
    return rows


if __name__ == "__main__":
    sys.exit(sweep_main(trials, ["synthetic_market", "synthetic_occluded"], __doc__.splitlines()[0],
                        "ablation_scgi", defaults=LAST_EPOCH))
