"""Parameters, inference FLOPs and training time beside SCING's Table 4 and CLIP-SCGI's Table II.

    python3 bench/efficiency.py                  # vit-b16, 256x128, 702 identities (Occluded-Duke)
    python3 bench/efficiency.py --classes 751    # Market-1501's training identities
    python3 bench/efficiency.py --no-train-time  # counts only (the whole bench took 268 CPU s on the 2-core machine)

Every method is built at the ``vit-b16`` preset with random weights
(``build_clip("vit-b16", pretrained=None, image_size=(256, 128))``, no SIE) and
its ``paper`` preset; sizes do not depend on the weights. Counts:

* ``total``: every parameter of the method module: vision tower + visual
  projection, text tower (token embedding included), text projection, logit
  scale, prompt learner (identity or part context tokens), SCING's fusion
  module, ProFD's decoder / visibility head, and the identity classifiers
  (BNNecks; SCING has none unless ``stage2_reid_losses``). Buffers (ProFD's
  memory banks) are not parameters and are not counted.
* ``no tok-emb``: ``total`` without the text token embedding (49,408 x 512 =
  25.3 M), which only looks up fixed words; this is the count that lands near
  Table 4's (CLIP-ReID's 126.55 M), so it is the like-for-like column.
* ``inference``: the parameters that ``embed_image`` depends on (those that get a
  gradient from its output): what a deployed model must hold.
* FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over ``embed_image`` in
  eval mode. It counts a multiply-add as 2 FLOPs (matmuls, convolutions and
  attention; no elementwise ops, norms or softmax). Papers that say "FLOPs" are
  usually reporting MACs (fvcore / thop count a multiply-add once), so both are
  printed. ``per image`` is the marginal cost of one more image (batch 2 minus
  batch 1); ``fixed`` is what a call costs whatever its batch (ProFD encodes its
  five part prompts with the text tower on every call).

CCAF (``ccaf``) trains a second image encoder, two prompt learners and Proj_c, but
embeds with E_v alone: its inference parameters and FLOPs are printed beside
CLIP-ReID's and checked equal (exit code 1 if they are not). It is built with
``--clothes`` clothes ids (default: one per identity), which only size its training-side
clothes prompts and classifier.

CLIP-SCGI's Table II compares parameters and the whole training time on Market-1501
(12,936 images, 751 identities) and MSMT17 (32,621 images, 1,041 identities). The
parameters are counted as above at each dataset's identities. The training time is an
estimate on this device: every stage's optimizer step is timed at P x K = ``--p`` x 4
images (K = 4 as in P16 x K4, so a CLIP-ReID prompt-stage step sees the same identities
per image as the paper's batch), scaled per image to the dataset and the paper preset's
epochs (CLIP-ReID: 120 prompt epochs on cached features + 60 image epochs; CLIP-SCGI: 60
epochs), plus each stage's ``begin_stage`` pass (CLIP-ReID caches every training image's
features) scaled the same way. On CPU the clock is the process's CPU time
(``time.process_time``, all threads), which a loaded machine does not inflate; on CUDA it
is wall time after a synchronise. The paper's figures are V100 wall seconds: only the
ratio between the two methods compares.
"""

from __future__ import annotations

import argparse
import gc
import sys
from dataclasses import dataclass
from pathlib import Path

from reidbench.methods import DataSpec
import torch
from torch.utils.flop_counter import FlopCounterMode

PAPER = {  # SCING, Table 4: parameters (M), FLOPs (G); the CCAF and CLIP-SCGI papers print neither
    "clip_reid": (126.55, 24.14),
    "profd": (138.47, 38.11),
    "scing": (126.95, 24.14),
}
# CLIP-SCGI, Table II: dataset -> (training images, identities, {method: (params M, training seconds)})
TABLE_II = {
    "market1501": (12936, 751, {"clip_reid": (89, 4689), "clip_scgi": (113, 4451)}),
    "msmt17": (32621, 1041, {"clip_reid": (90, 12904), "clip_scgi": (113, 13534)}),
}
VARIANTS = (  # (row label, method, params over its paper preset)
    ("clip_reid", "clip_reid", {}),
    ("profd", "profd", {}),
    ("scing", "scing", {}),
    # SCING with CLIP-ReID's BNNeck classifiers kept (params.stage2_reid_losses=true): the model Table 4 counts
    ("scing+necks", "scing", {"stage2_reid_losses": True}),
    ("ccaf", "ccaf", {}),
    ("clip_scgi", "clip_scgi", {}),
)
COMPONENTS = (  # (label, predicate on the parameter name)
    ("vision", lambda n: n.startswith(("backbone.vision.", "backbone.visual_projection."))),
    ("tok-emb", lambda n: "token_embedding" in n and n.startswith("backbone.text")),
    ("text", lambda n: n.startswith(("backbone.text", "backbone.logit_scale"))),
    ("prompts", lambda n: n.startswith(("prompt_learner.", "clothes_prompt_learner."))),
    ("fusion", lambda n: n.startswith(("fusion.", "cgi.", "cff."))),
    ("shield", lambda n: n.startswith(("shield_encoder.", "shield_head."))),  # CCAF's E_v^s
    ("cfm", lambda n: n.startswith(("proj_c.", "clothes_classifier."))),  # CCAF's Proj_c
    ("heads", lambda n: n.startswith(("head.", "neck_"))),
    ("other", lambda n: True),
)


@dataclass
class Row:
    label: str
    method: str
    total: int
    components: dict[str, int]
    inference: int
    flops_per_image: int
    flops_fixed: int


def build(method_name: str, num_classes: int, image_size: tuple[int, int], params: dict | None = None,
          num_clothes: int | None = None):
    from reidbench.backbones import build_clip
    from reidbench.config import from_dict, merge
    from reidbench.methods import get_method

    cls = get_method(method_name)
    config = from_dict(cls.config_cls, merge(cls.PRESETS.get("paper", {}), params or {}))
    backbone = build_clip("vit-b16", pretrained=None, image_size=image_size)
    clothes = num_classes if num_clothes is None else num_clothes
    return cls(config, backbone, DataSpec(num_classes, 0, clothes if "clothes_id" in cls.requires else 0)).eval()


def component_counts(method: torch.nn.Module) -> dict[str, int]:
    counts = {label: 0 for label, _ in COMPONENTS}
    for name, p in method.named_parameters():
        label = next(label for label, match in COMPONENTS if match(name))
        counts[label] += p.numel()
    return counts


def _outputs(out) -> list[torch.Tensor]:
    return list(out.values()) if isinstance(out, dict) else [out]


def inference_parameters(method: torch.nn.Module, batch: dict) -> int:
    """Parameters ``embed_image``'s output depends on (they receive a gradient)."""
    method.zero_grad(set_to_none=True)
    for p in method.parameters():
        p.requires_grad_(True)
    out = _outputs(method.embed_image(batch))
    sum(o.float().sum() for o in out if o.requires_grad).backward()
    used = sum(p.numel() for p in method.parameters() if p.grad is not None)
    method.zero_grad(set_to_none=True)
    return used


def count_flops(method: torch.nn.Module, batch_size: int, image_size: tuple[int, int]) -> int:
    batch = image_batch(batch_size, image_size)
    # FlopCounterMode's module tracker hooks every tensor that requires grad, and fails on a
    # parameter used directly under no_grad (CLIP-SCGI's CGI queries), so none requires grad here.
    for p in method.parameters():
        p.requires_grad_(False)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        method.embed_image(batch)
    return counter.get_total_flops()


def image_batch(n: int, image_size: tuple[int, int]) -> dict:
    return {"image": torch.randn(n, 3, *image_size), "camid": torch.zeros(n, dtype=torch.long),
            "pid": torch.zeros(n, dtype=torch.long), "index": torch.arange(n)}


def measure(label: str, method_name: str, num_classes: int, image_size: tuple[int, int],
            params: dict | None = None, num_clothes: int | None = None) -> Row:
    torch.manual_seed(0)
    method = build(method_name, num_classes, image_size, params, num_clothes)
    f1, f2 = count_flops(method, 1, image_size), count_flops(method, 2, image_size)
    row = Row(label, method_name, sum(p.numel() for p in method.parameters()), component_counts(method),
              inference_parameters(method, image_batch(1, image_size)), f2 - f1, 2 * f1 - f2)
    if method_name == "scing":  # the exported evaluation model must hold exactly what embed_image uses
        exported = sum(p.numel() for p in method.inference_model().parameters())
        if exported != row.inference:
            raise AssertionError(f"scing: exported inference model has {exported} parameters, embed_image uses "
                                 f"{row.inference}")
    del method
    gc.collect()
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=702, help="training identities (Occluded-Duke: 702)")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--clothes", type=int, default=None, help="ccaf's clothes ids (default: --classes)")
    parser.add_argument("--no-train-time", action="store_true", help="skip Table II's training-time estimate")
    parser.add_argument("--p", type=int, default=2, help="identities per timed step (K = 4)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per stage (after one untimed)")
    args = parser.parse_args(argv)
    image_size = (args.height, args.width)
    torch.set_grad_enabled(True)

    from reidbench.methods import list_methods

    available = set(list_methods())
    rows = []
    for label, name, params in VARIANTS:
        if name not in available:
            print(f"[efficiency] {name}: not registered in reidbench.methods (missing), skipped")
            continue
        rows.append(measure(label, name, args.classes, image_size, params, args.clothes))

    M, G = 1e6, 1e9
    print(f"\nvit-b16 at {image_size[0]}x{image_size[1]}, {args.classes} identities, random weights; "
          f"FLOPs = FlopCounterMode (2 per multiply-add), MACs = FLOPs / 2\n")
    header = (f"{'method':<12} {'total M':>8} {'no tok-emb M':>12} {'inference M':>11} {'GFLOPs/img':>10} "
              f"{'GMACs/img':>9} {'fixed GFLOPs':>12} | {'paper M':>7} {'paper G':>7}")
    print(header)
    print("-" * len(header))
    for r in rows:
        no_tok = r.total - r.components["tok-emb"]
        pm, pg = (f"{v:>7.2f}" for v in PAPER[r.method]) if r.method in PAPER else ("—".rjust(7),) * 2
        print(f"{r.label:<12} {r.total / M:>8.2f} {no_tok / M:>12.2f} {r.inference / M:>11.2f} "
              f"{r.flops_per_image / G:>10.2f} {r.flops_per_image / 2 / G:>9.2f} {r.flops_fixed / G:>12.2f} | "
              f"{pm} {pg}")
    print("\nparameters by component (M):")
    labels = [label for label, _ in COMPONENTS]
    print(f"{'method':<12} " + " ".join(f"{label:>8}" for label in labels))
    for r in rows:
        print(f"{r.label:<12} " + " ".join(f"{r.components[label] / M:>8.3f}" for label in labels))

    by = {r.label: r for r in rows}
    print("\nHow each count is made: 'total' is every parameter of the method module (both CLIP towers with the "
          "token embedding, prompt learner, fusion module, decoders, BNNeck classifiers); 'no tok-emb' drops the "
          "text token embedding; 'inference' counts the parameters embed_image depends on. clip_reid and scing "
          "embed with the image encoder alone (clip_reid: concat(CLS, projected CLS) before the BNNecks; scing: the "
          "projected CLS), so their inference parameters and FLOPs are the vision tower's; profd also runs its "
          "hybrid-attention decoder and the visibility head per image and the text tower on its five part prompts "
          "per call (the 'fixed' column), so its prompts, text tower and token embedding count as inference "
          "parameters.")
    paper_delta = PAPER["scing"][0] - PAPER["clip_reid"][0]
    if "clip_reid" in by:
        c = by["clip_reid"]
        c_like = (c.total - c.components["tok-emb"]) / M
        print(f"\nParameters: clip_reid without the token embedding is {c_like:.2f} M against Table 4's "
              f"{PAPER['clip_reid'][0]:.2f} M, so the paper counts both towers (token embedding excluded), the "
              "prompt learner and the classifiers: a training-model count, not what inference holds.")
        for label in ("scing", "scing+necks"):
            if label in by:
                s_ = by[label]
                print(f"  {label}: {(s_.total - c.total) / M:+.3f} M vs clip_reid (paper {paper_delta:+.2f} M): "
                      f"SVIP {s_.components['fusion'] / M:.3f} M, BNNeck classifiers {s_.components['heads'] / M:.3f} "
                      f"M vs clip_reid's {c.components['heads'] / M:.3f} M.")
        if "scing+necks" in by:
            print("  The paper's +0.40 M is SVIP alone on a model that keeps CLIP-ReID's BNNeck classifiers "
                  "(scing+necks); SCING's Eq. 20 uses none, so our default scing carries none and is smaller.")
    if "clip_reid" in by and "scing" in by:
        c, s_ = by["clip_reid"], by["scing"]
        print(f"\nFLOPs: scing and clip_reid both embed with the image encoder alone: {s_.inference / M:.2f} vs "
              f"{c.inference / M:.2f} M inference parameters, {s_.flops_per_image / G:.2f} vs "
              f"{c.flops_per_image / G:.2f} GFLOPs per image (the paper: equal, {PAPER['scing'][1]:.2f} G). Our "
              f"counter gives {c.flops_per_image / G:.2f} GFLOPs = {c.flops_per_image / 2 / G:.2f} GMACs for the "
              f"ViT-B/16 vision tower at this input; Table 4's {PAPER['clip_reid'][1]:.2f} G is "
              f"{PAPER['clip_reid'][1] / (c.flops_per_image / G):.2f}x the former and "
              f"{PAPER['clip_reid'][1] / (c.flops_per_image / 2 / G):.2f}x the latter, so it matches neither "
              "convention exactly (FlopCounterMode skips norms, activations and softmax, which are well under 1 % "
              "here); the paper does not say how it counted.")
    if "clip_reid" in by and "profd" in by:
        c, p = by["clip_reid"], by["profd"]
        ratio1 = (p.flops_per_image + p.flops_fixed) / (c.flops_per_image + c.flops_fixed)
        ratio = p.flops_per_image / c.flops_per_image
        paper = PAPER["profd"][1] / PAPER["clip_reid"][1]
        print(f"ProFD / CLIP-ReID FLOPs: {ratio1:.2f} for one image (the part-prompt text pass included), "
              f"{ratio:.2f} per image once that pass is amortised over a batch; paper {paper:.2f}. ProFD's extra "
              f"cost is mostly the text tower on its five prompts ({p.flops_fixed / G:.2f} GFLOPs here, prompts "
              "of n_ctx + part-name tokens ending at EOS); it grows with the prompt length (padding every prompt to "
              "CLIP's 77 tokens, as OpenAI's code does, would cost several times more) and vanishes per image when "
              "the prompt features are cached, so the ratio depends on how the prompt pass is counted, which the "
              "paper does not say. Parameters (token embedding excluded): "
              f"{(p.total - p.components['tok-emb']) / (c.total - c.components['tok-emb']):.2f} "
              f"(paper {PAPER['profd'][0] / PAPER['clip_reid'][0]:.2f}).")
    status = 0
    if "clip_reid" in by and "ccaf" in by:
        status = print_ccaf_vs_clip_reid(by["clip_reid"], by["ccaf"])
    if "clip_reid" in by and "clip_scgi" in by:
        print_table_ii(image_size, None if args.no_train_time else (args.p, args.steps))
    return status


def print_ccaf_vs_clip_reid(c: Row, a: Row) -> int:
    """CCAF at inference beside CLIP-ReID: the paper's claim that they cost the same."""
    M, G = 1e6, 1e9
    same = (a.inference, a.flops_per_image, a.flops_fixed) == (c.inference, c.flops_per_image, c.flops_fixed)
    print("\nCCAF vs CLIP-ReID at inference (E_v alone, concat(CLS, projected CLS) before the BNNecks, cosine):")
    print(f"{'':<22} {'clip_reid':>10} {'ccaf':>10}")
    print(f"{'inference params (M)':<22} {c.inference / M:>10.2f} {a.inference / M:>10.2f}")
    print(f"{'GFLOPs per image':<22} {c.flops_per_image / G:>10.2f} {a.flops_per_image / G:>10.2f}")
    print(f"{'fixed GFLOPs per call':<22} {c.flops_fixed / G:>10.2f} {a.flops_fixed / G:>10.2f}")
    print(f"{'training params (M)':<22} {c.total / M:>10.2f} {a.total / M:>10.2f}")
    print(f"  {'equal' if same else 'DIFFERENT'} at inference; in training ccaf adds the shielding encoder "
          f"E_v^s ({a.components['shield'] / M:.2f} M), Proj_c ({a.components['cfm'] / M:.2f} M) and the clothes "
          f"prompts ({(a.components['prompts'] - c.components['prompts']) / M:+.2f} M of prompt context), none of "
          "which embed_image reads.")
    return 0 if same else 1


def print_table_ii(image_size: tuple[int, int], timing: tuple[int, int] | None) -> None:
    """CLIP-SCGI's Table II: parameters and training time, CLIP-ReID against CLIP-SCGI."""
    M = 1e6
    print("\nCLIP-SCGI Table II (parameters; training time estimated on this device, see the module docstring):")
    per_image = {}
    if timing is not None:
        p, steps = timing
        for name in ("clip_reid", "clip_scgi"):
            per_image[name] = stage_costs(name, image_size, p, steps)
        clock = "wall s" if torch.cuda.is_available() else "CPU s"
        for name, stages in per_image.items():
            shown = ", ".join(f"{s}: {epochs} epochs x {step * 1e3:.0f} ms + begin {begin * 1e3:.0f} ms per image"
                              for s, epochs, step, begin in stages)
            print(f"  {name}: {shown} ({clock})")
    clock_h = "train wall h" if torch.cuda.is_available() else "train CPU h"
    header = (f"{'dataset':<11} {'method':<10} {'total M':>8} {'no tok-emb M':>12} {'img+new M':>9} "
              f"{clock_h + ' (est.)':>18} | {'paper M':>7} {'paper s':>7}")
    print(header)
    print("-" * len(header))
    for dataset, (images, classes, paper) in TABLE_II.items():
        for name in ("clip_reid", "clip_scgi"):
            torch.manual_seed(0)
            method = build(name, classes, image_size)
            counts = component_counts(method)
            total = sum(counts.values())
            del method
            gc.collect()
            # the image side, the prompt learner and the new modules: what CLIP-ReID's 89 M can be
            image_new = total - counts["text"] - counts["tok-emb"]
            hours = "—"
            if name in per_image:
                seconds = sum(images * (epochs * step + begin) for _, epochs, step, begin in per_image[name])
                hours = f"{seconds / 3600:.1f}"
            pm, ps = paper[name]
            print(f"{dataset:<11} {name:<10} {total / M:>8.2f} {(total - counts['tok-emb']) / M:>12.2f} "
                  f"{image_new / M:>9.2f} {hours:>18} | {pm:>7} {ps:>7}")
    paper_ratio = TABLE_II["market1501"][2]["clip_scgi"][1] / TABLE_II["market1501"][2]["clip_reid"][1]
    if per_image:
        ours = {n: sum(epochs * step + begin for _, epochs, step, begin in st) for n, st in per_image.items()}
        print(f"  training time clip_scgi / clip_reid: {ours['clip_scgi'] / ours['clip_reid']:.2f} here "
              f"(paper: {paper_ratio:.2f} on Market-1501, "
              f"{TABLE_II['msmt17'][2]['clip_scgi'][1] / TABLE_II['msmt17'][2]['clip_reid'][1]:.2f} on MSMT17)")
    print("  The paper's 89 M / 113 M match neither total; 'img+new' (image side, prompt learner, CGI, CFF, "
          "classifiers: the text tower left out) is the closest reading for CLIP-ReID. CLIP-SCGI trains its text "
          "tower as well (the paper gives one lr 'for CLIP').")


def stage_costs(name: str, image_size: tuple[int, int], p: int, steps: int) -> list[tuple[str, int, float, float]]:
    """``(stage, paper epochs, seconds per training image per epoch, begin_stage seconds per image)``:
    each stage's optimizer step timed at P x 4 images over a virtual split of P identities."""
    import time

    from reidbench.harness.optim import build_optimizer, set_trainable
    from reidbench.harness.trainer import _StepModule

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_speed import batch_of  # bench/train_speed.py: a batch of random images, maps and texts

    k = 4
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    clock = time.perf_counter if cuda else time.process_time

    def now() -> float:
        if cuda:
            torch.cuda.synchronize()
        return clock()

    torch.manual_seed(0)
    method = build(name, p, image_size).to(device)
    generator = torch.Generator().manual_seed(0)
    split = batch_of(torch.arange(p * k), k, image_size, device, generator)
    out = []
    for stage in method.stages():
        set_trainable(method, stage)
        t0 = now()
        method.begin_stage(stage, lambda: iter([split]))
        begin = (now() - t0) / (p * k)
        module = _StepModule(method).train()
        optimizer = build_optimizer(method, stage)

        def step() -> None:
            terms = module(split, stage)
            sum(v for v in terms.values() if isinstance(v, torch.Tensor)).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        step()  # untimed: first-call allocations
        t0 = now()
        for _ in range(steps):
            step()
        out.append((stage.name, stage.epochs, (now() - t0) / steps / (p * k), begin))
    del method
    gc.collect()
    return out


if __name__ == "__main__":
    sys.exit(main())
