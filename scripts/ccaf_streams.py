"""Where CCAF's clothes-free identity goes: each stream of trained CCAF runs scored on the
test split, on raw and on shielding images (clothes set to white).

    python scripts/ccaf_streams.py runs/ccaf/default/synthetic_cc/0 ... --out results/ccaf_streams_synthetic_cc.csv

CCAF (``reidbench.methods.ccaf``) trains a second image encoder E_v^s on shielding images
and pulls the raw encoder E_v's identity centres towards it (L_con), but tests with E_v on
raw images alone. Per run and per protocol of its dataset this scores:

* ``raw/raw``: E_v on raw images, the method's own test (the run's logged numbers);
* ``shield/shield``: E_v^s on shielding images: how far the stream that never sees
  clothes can re-identify people across outfits (needs ``use_i2i``);
* ``raw/shield``: E_v on shielding images: whether E_v has learnt to use what is left
  when the clothes are gone.

If ``shield/shield`` is well above ``raw/raw`` on the cloth-changing protocol, the
identity is learnt but L_con does not carry it to E_v; if it is not, the shielding stream
does not learn it either. Test-time images get the parsing maps here (a diagnostic, not
the paper's protocol, which reads none). Prints the table and writes it (first line: the
command).
"""

from __future__ import annotations

import argparse
import sys

STREAMS = (("raw", "raw"), ("shield", "shield"), ("raw", "shield"))


def stream_features(method, loader, device, encoder: str, images: str):
    """Test embeddings of one (encoder, images) pair, in split order."""
    import torch

    from reidbench.harness.trainer import to_device
    from reidbench.methods.components import DualNeckHead, encode_images

    cfg = method.config
    backbone, head = (method.backbone, method.head) if encoder == "raw" else (method.shield_encoder, method.shield_head)
    chunks = []
    method.eval()
    with torch.no_grad():
        for batch in loader:
            batch = to_device(batch, device)
            if images == "shield":
                batch = {**batch, "image": method.masked_images(batch)[0]}
            out = head(encode_images(backbone, batch, cfg.sie))
            chunks.append(DualNeckHead.inference_feature(out, cfg.neck_feat).float().cpu())
    return torch.cat(chunks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="trained ccaf run folders or checkpoints")
    parser.add_argument("--out", default=None, help="CSV to write (first line: the command)")
    args = parser.parse_args(argv)

    import numpy as np
    import pandas as pd

    from reidbench.datasets.loader import build_eval_loader
    from reidbench.harness.evaluate import rank_metrics_from_features
    from reidbench.harness.evaluation_command import load_trained_run
    from reidbench.harness.results import write_results_csv
    from reidbench.harness.trainer import eval_pixels, local_device
    from reidbench.methods import Method

    rows = []
    for run in args.runs:
        cfg, prep = load_trained_run(run)
        if cfg.method != "ccaf":
            raise ValueError(f"{run}: a {cfg.method} run; the streams are CCAF's")
        device = local_device(None)
        method = prep.method.to(device)
        metric = method.distance if type(method).distance is not Method.distance else "cosine"
        streams = [s for s in STREAMS if s[0] == "raw" or method.config.use_i2i]
        for ev in prep.dataset.evaluations:
            splits = {name: prep.dataset.splits[name] for name in (ev.query, ev.gallery)}
            loaders = {name: build_eval_loader(samples, prep.image_size, cfg.data.eval_batch_size, with_masks=True,
                                               **eval_pixels(cfg, method)) for name, samples in splits.items()}
            for encoder, images in streams:
                q, g = (stream_features(method, loaders[name], device, encoder, images) for name in (ev.query, ev.gallery))

                def column(name, key):
                    return np.array([getattr(s, key) for s in splits[name]])

                result = rank_metrics_from_features(
                    q, g, column(ev.query, "pid"), column(ev.gallery, "pid"), column(ev.query, "camid"),
                    column(ev.gallery, "camid"), q_clothes=column(ev.query, "clothes_id"),
                    g_clothes=column(ev.gallery, "clothes_id"), protocol=ev.protocol, metric=metric)
                rows.append({"run": run, "ablation": cfg.tracking.ablation, "seed": cfg.seed, "evaluation": ev.name,
                             "encoder": encoder, "images": images,
                             **{k: round(v, 2) for k, v in result.summary().items()}})
    table = pd.DataFrame(rows)
    print(table.drop(columns="run").to_string(index=False))
    if args.out:
        print(f"wrote {write_results_csv(table, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
