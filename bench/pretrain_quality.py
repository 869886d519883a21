"""How well the default pretrained tiny CLIP aligns text and image, against a random-init one.

    python bench/pretrain_quality.py                      # fresh cache in a temp dir: times the first use
    python bench/pretrain_quality.py --cache-dir DIR      # reuse (or fill) DIR instead
    python bench/pretrain_quality.py --steps 2 --images 256   # smoke run of the bench itself

Prints, for the default ``reidbench pretrain`` (``PretrainConfig()``):

* the token-length distribution of every kind of text the generator writes (and fails,
  like the pretraining itself, if any would be truncated by the text context);
* the wall time of the first use on an empty cache (``total``: rendering the pairs,
  training the word tokenizer, training and the held-out evaluation; ``train`` alone);
* on the held-out pairs (other identities): image-to-caption R@1 among the generator's
  captions and zero-shot accuracy per attribute (upper and lower colour, upper pattern,
  shoes, hair, bag, gender), pretrained vs random init, with chance and majority;
* zero-shot text-to-image retrieval on ``synthetic_pedes``' test split (every test caption
  queries every test image; IRRA's R1 and mAP, in percent): pretrained vs random init vs chance (random
  scores, the mean of 5 draws).

The last line is machine-readable: ``SUMMARY total_s=... R1=... upper=... lower=... t2i_R1=... t2i_mAP=...``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def _pedes_t2i(model, cache_dir: Path) -> dict:
    """R1 / mAP of text-to-image retrieval on synthetic_pedes' test split with ``model``'s towers."""
    import numpy as np
    import torch
    from PIL import Image

    from reidbench.backbones.pretrain import _image_embeddings, _text_embeddings
    from reidbench.datasets import build_dataset
    from reidbench.harness.evaluate import retrieval_metrics

    dataset = build_dataset("synthetic_pedes", None)
    images, texts = dataset.splits["test_images"], dataset.splits["test_texts"]
    size = model.image_size
    pixels = np.stack([np.asarray(Image.open(s.path).convert("RGB").resize((size[1], size[0]))) for s in images])
    captions = [s.texts_of("caption")[0] for s in texts]
    image_pids = np.array([s.pid for s in images])
    text_pids = np.array([s.pid for s in texts])
    image_emb = _image_embeddings(model.eval(), torch.as_tensor(pixels))
    text_emb = _text_embeddings(model, captions)
    result = retrieval_metrics(text_emb, image_emb, text_pids, image_pids).summary()
    return {"R1": result["R1"], "mAP": result["mAP"], "queries": len(captions), "images": len(images),
            "pids": len(set(image_pids.tolist())), "features": (text_emb, image_emb, text_pids, image_pids)}


def _chance_t2i(text_pids, image_pids, draws: int = 5) -> dict:
    import numpy as np
    import torch

    from reidbench.harness.evaluate import retrieval_metrics

    generator = torch.Generator().manual_seed(0)
    runs = [retrieval_metrics(torch.randn(len(text_pids), 16, generator=generator),
                              torch.randn(len(image_pids), 16, generator=generator), text_pids, image_pids).summary()
            for _ in range(draws)]
    return {"R1": float(np.mean([r["R1"] for r in runs])), "mAP": float(np.mean([r["mAP"] for r in runs]))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache-dir", default=None, help="cache root (default: a fresh temporary directory)")
    p.add_argument("--no-pedes", action="store_true", help="skip the synthetic_pedes text-to-image retrieval")
    p.add_argument("--steps", type=int, default=None, help="smoke runs only: fewer steps than the default")
    p.add_argument("--images", type=int, default=None, help="smoke runs only: fewer pairs than the default")
    args = p.parse_args()
    cache = Path(args.cache_dir) if args.cache_dir else Path(tempfile.mkdtemp(prefix="reidbench-pretrain-quality-"))
    # Everything under one cache: the tokenizer, the pretrained CLIP and synthetic_pedes.
    os.environ["REIDBENCH_CACHE"] = str(cache)

    import torch

    from reidbench.backbones import build_clip
    from reidbench.backbones import pretrain as P

    from dataclasses import replace

    cfg = P.PretrainConfig()
    cfg = replace(cfg, steps=args.steps or cfg.steps, n_images=args.images or cfg.n_images)
    fresh = not P.pretrained_dir(cfg, cache).exists()
    started = time.perf_counter()
    path = P.pretrain_tiny(cfg, cache_dir=cache)
    wall = time.perf_counter() - started
    record = P.read_record(path)

    pretrained = build_clip("tiny", pretrained=path).eval()
    lengths = P.check_text_lengths(pretrained.tokenizer)
    print(P.format_text_lengths(lengths, pretrained.tokenizer.context_length))

    torch.manual_seed(cfg.seed)
    random_init = build_clip("tiny", pretrained=None, cache_dir=cache).eval()
    held_images, held_captions, held_attributes = P.heldout_pairs(cfg)
    scores = {"pretrained": record["heldout"],
              "random init": P.evaluate_pretraining(random_init, held_images, held_captions, held_attributes)}

    print(f"\npretraining ({cfg.budget()} of {cfg.batch_size}, {cfg.n_images} pairs, {torch.get_num_threads()} threads): "
          + (f"first use {wall:.0f}s wall" if fresh else f"cached (recorded total {record['total_seconds']:.0f}s)")
          + f"; recorded total {record['total_seconds']:.0f}s = data {record['data_seconds']:.0f}s + train "
          f"{record['train_seconds']:.0f}s + evaluation; loss {record['first_loss']:.2f} -> {record['final_loss']:.2f}")
    held = scores["pretrained"]
    print(f"\nheld-out ({cfg.heldout_images} images, other identities)   pretrained   random init   chance   majority")
    print(f"  image->caption R@1 ({held['caption_candidates']} captions)"
          f"{held['image_to_caption_R1']:>11.3f}{scores['random init']['image_to_caption_R1']:>14.3f}"
          f"{1 / held['caption_candidates']:>9.3f}")
    for factor in sorted(held["zero_shot"], key=lambda f: list(P.DEFAULT_PROMPTS).index(f) if f in P.DEFAULT_PROMPTS else 99):
        r = held["zero_shot"][factor]
        other = scores["random init"]["zero_shot"][factor]
        print(f"  zero-shot {factor:<26s}{r['accuracy']:>11.3f}{other['accuracy']:>14.3f}{r['chance']:>9.3f}"
              f"{r['majority']:>11.3f}")
        if r.get("plain_accuracy") is not None:
            print(f"    {factor}, plain garments (n={r['plain_n']}){'':<{12 - len(str(r['plain_n']))}}"
                  f"{r['plain_accuracy']:>5.3f}{other['plain_accuracy']:>14.3f}")

    t2i = {}
    if not args.no_pedes:
        t2i["pretrained"] = _pedes_t2i(pretrained, cache)
        t2i["random init"] = _pedes_t2i(random_init, cache)
        _, _, text_pids, image_pids = t2i["pretrained"]["features"]
        t2i["chance"] = _chance_t2i(text_pids, image_pids)
        info = t2i["pretrained"]
        print(f"\nsynthetic_pedes test, zero-shot text->image ({info['queries']} captions, {info['images']} images, "
              f"{info['pids']} ids)")
        for name in ("pretrained", "random init", "chance"):
            print(f"  {name:<12s} R1 {t2i[name]['R1']:5.1f}   mAP {t2i[name]['mAP']:5.1f}")

    zs = held["zero_shot"]
    line = (f"SUMMARY total_s={record['total_seconds']:.0f} train_s={record['train_seconds']:.0f} "
            f"R1={held['image_to_caption_R1']:.3f} upper={zs['upper_colour']['accuracy']:.3f} "
            f"lower={zs['lower_colour']['accuracy']:.3f}")
    if t2i:
        line += f" t2i_R1={t2i['pretrained']['R1']:.1f} t2i_mAP={t2i['pretrained']['mAP']:.1f}"
    print("\n" + line)


if __name__ == "__main__":
    main()
