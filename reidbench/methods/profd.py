"""ProFD (Cui et al., ACM MM 2024): prompt-guided feature disentangling for
occluded person ReID. Every equation of the paper (Eqs. 4-19) is here:

* **Part-specific prompts** (Eq. 4): ``M`` learnable prefix tokens shared by the
  five parts, then the part name ("head", "upper arms and torso", "lower arms
  and torso", "legs", "feet"), encoded by the frozen CLIP text encoder into
  ``E_pro [N, d]`` (the prefix learns through the frozen encoder).
* **Spatial-level alignment** (Eqs. 5-6): scores ``S = scale * <F_ij/|F_ij|,
  E_pro^n/|E_pro^n|>`` of every patch feature against every prompt, trained with
  cross-entropy against the part masks average-pooled with the patch stride
  (``AP``: kernel = stride = the patch size) into soft patch labels ``M_p``.
* **Hybrid-attention decoder** (Eqs. 7-11, Fig. 3): per layer, reverse
  cross-attention updates the patch tokens from the prompts (Eq. 7); the
  spatial-aware attention SPA (Eq. 8, one head, ``softmax(E_pro (E_pat W_k)^T /
  sqrt(d)) E_pat W_v``) whose attention map is supervised by the patch labels
  (``L_attn``, Eq. 9) and the semantic-aware attention SEA (Eq. 10, multi-head)
  read the patch tokens; their outputs are summed, attend to the updated patch
  tokens (Eq. 11) and go through the FFN (d -> 4d, GELU, dropout, -> d).
* **Diversity loss** (Eq. 12), literally ``1/(N(N-1)) sum_{i<j} |cos(f_i, f_j)|``:
  0 for orthogonal part features, 1/2 for identical ones.
* **Visibility** (Eq. 13): one binary classifier per part on its feature, focal
  loss (alpha 0.65, gamma 2; ``torchvision.ops.sigmoid_focal_loss`` is exactly
  Eq. 13 on logits); target: the part has a pixel in the (augmented) mask.
  **Test distance** (Eq. 14): ``(sum_i v_i^q v_i^g d_i + d_g) / (sum_i v_i^q v_i^g
  + 1)`` with cosine distances and *predicted* visibility (masks are never read
  at test time).
* **General knowledge preservation** (Eqs. 15-18): a global memory bank of
  identity centroids (momentum ``m_g``) and a part memory bank of concatenated
  part features (momentum ``m_p``, initialised by mask-weighted average pooling
  ``WAP(F, M_p^n)`` of the feature map), each with the prototypical contrastive
  loss (PCL, cosine similarity / tau, tau = 0.05).
* **Objective** (Eq. 19): ID + triplet on the global feature ``F_g`` and on the
  concatenated part features ``F_c``, + ``L_div`` + both PCL terms + ``L_align``
  + ``L_attn`` + ``L_vis``; one stage (the paper's point against CLIP-ReID's two).

Ablation switches (one config per row): Table 3 ``attention`` in {``none`` (no
decoder: weighted average pooling of the patch features by the predicted parsing
``softmax(S)``), ``sea``, ``spa``, ``both``}; Table 4 ``memory_bank`` in {``none``,
``global``, ``part``, ``both``}; Table 5 ``use_align`` / ``use_div``; Fig. 4 ``m_g``
/ ``m_p``. A removed component is not built (no parameters, no buffers, no loss
term). Mask noise is a dataset-side knob (run config ``data.synthetic.mask_noise``,
or ``reidbench data synth --mask-noise`` plus ``data.root``): the method only
reads ``batch["mask"]``, so a noise sweep needs nothing from it.

Masks. ProFD needs a part-label map for every training image: ``batch["mask"]``
``[B,H,W]`` with 0 = background, 1 head, 2 upper arms and torso, 3 lower arms and
torso, 4 legs, 5 feet. The dataset adapters attach them from ``Sample.mask_path``
(``<dataset>/masks/<image path>.png``, one uint8 label PNG per image; the synthetic
generator writes them). For real benchmarks, convert the official code's PifPaf
masks (``<dataset>/masks/pifpaf_maskrcnn_filtering/...``, grouped with its
``five_v`` recipe) into that layout. A training batch without masks is an error
that says so; test batches never need them.

Decisions where the paper is vague (each a switch when it can matter):

* Feature space: everything lives in CLIP's joint embedding space of width ``d =
  embed_dim`` (512 for ViT-B/16): the patch tokens go through CLIP's visual
  projection ("768 -> 512 as CLIP-ReID"), ``F_g`` is the projected CLS token, the
  decoder works at width ``d`` (the official code does the same).
* Background (``background``): Eq. 5 has only the N part prompts, but patches of
  background need a class. ``"learned"`` (default, as the official code): a
  learnable embedding is class 0 of the alignment softmax. ``"ignore"``: N-way
  softmax, patches whose dominant label is background are left out of
  ``L_align``. The decoder has N part queries only (Eq. 8-11); background is not
  a query.
* Alignment logits: cosine scaled by ``align_logit_scale`` = 5 (the official
  code's constant; plain cosines cannot get below CE 0.5 on six classes).
  Targets: the soft patch labels ``AP(M)`` (fraction of each label in a patch).
* ``L_attn`` target (Eq. 9 writes ``softmax(M_p^T)`` over patches): with ``M_p``
  in [0, 1] a plain softmax is almost uniform, so it is
  ``softmax(M_p^n / attn_target_temperature)`` over the patches (temperature
  0.1; 1.0 is the literal formula; the official code uses 0.01 on sharpened
  labels). An absent part gets a uniform target, the "attention scattered over
  the image" of the paper's Fig. 5. Summed over patches, averaged over images,
  parts and decoder layers.
* Decoder details from Fig. 3 / the official code: LayerNorm on both inputs;
  residual + LayerNorm ("Add & Norm") after the reverse attention, after
  SEA + SPA, after the final attention and after the FFN; SEA/SPA read the
  decoder's input patch tokens, the final attention reads the reverse-updated
  ones; each layer starts again from the input patch tokens; dropout 0.1.
* Diversity loss: the literal normalisation (identical parts give 1/2).
* Visibility classifiers read the part features ``F_p`` (pre-BN). At test the
  visibility score is the sigmoid probability with scores below
  ``visibility_floor`` = 0.1 zeroed (official code), or ``test_visibility =
  "binary"``: ``p >= 0.5``.
* ID/triplet (Eq. 19): BNNeck (bag-of-tricks) + label-smoothed CE on ``F_g`` and
  on ``F_c``; batch-hard triplet (margin 0.3) on the pre-BN features. Test features
  are pre-BN (``neck_feat="before"``, as CLIP-ReID's released config).
* Memory banks: PCL and the banks use the BNNeck outputs (the official code's
  ``bn_globl`` / ``bn_conct``), L2-normalised; initialised in ``begin_stage``
  from the un-augmented training split in eval mode (identity mean, then L2
  normalised); the part bank from ``BN_c([WAP(F, M_p^1); ...; WAP(F, M_p^N)])``.
  The PCL logits use the bank as it was before this batch, then Eq. 15/17
  updates it: ``bank_update="every"`` applies the update for each sample in
  batch order (the literal equation), ``"hardest"`` once per identity with its
  least similar sample (the official ``CM_Hard``); the updated row is
  renormalised. The banks are buffers (checkpointed); ``begin_stage`` leaves an
  initialised bank alone, so a resumed run keeps its bank. Under DDP the
  update uses the features of every rank (all-gathered).
* Schedule: the paper's Adam, lr 5e-5, weight decay 5e-4, x0.1 at epochs 30 and
  50, 120 epochs; the linear warmup (10 epochs from 0.1x) is CLIP-ReID's, which
  the paper says it follows, stepped at the start of each epoch as CLIP-ReID's
  ``WarmupMultiStepLR`` (``schedule_offset`` 1).
* Data recipe (``DATA_RECIPE``): CLIP-ReID's normalisation (mean = std = 0.5) and
  Sec. 4.2's flip, random erasing and padding-crop "each with 50%" (``crop_p`` 0.5).
* Overlapping patches (ProFD*, ``backbone.preset=vit-b16-s12``): ``AP`` pools the
  masks with the patchifying kernel and stride (Eq. 6's text), so each patch label
  covers exactly the pixels its overlapping patch sees. Loss weights all 1 (Eq. 19); the official code
  weights ``L_vis`` 10 and the parsing loss 5 (``weights.*`` switches).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from ..datasets.transforms import CLIP_REID_MEAN, CLIP_REID_STD
from .base import DataSpec, Method, Stage, register_method
from .components import (
    TINY_IMAGE_LR,
    BNNeck,
    CrossEntropyLabelSmooth,
    PresetConfig,
    PromptLearner,
    TripletLoss,
    cosine_distance,
    encode_images,
    image_side_prefixes,
)
from .layers import Mlp

PART_NAMES = ("head", "upper arms and torso", "lower arms and torso", "legs", "feet")
NUM_PARTS = len(PART_NAMES)
TRAIN_STAGE = "train"

# --------------------------------------------------------------------------
# masks -> patch labels, and the mask-supervised losses


def patch_labels(mask: torch.Tensor, grid: tuple[int, int], num_labels: int = NUM_PARTS + 1,
                 patch_size: int | None = None, stride: int | None = None) -> torch.Tensor:
    """``AP(M)`` of Eq. 6: part-label maps ``[B,H,W]`` (0 = background, 1..N parts)
    -> soft patch labels ``[B, num_labels, h*w]``, the fraction of each label's
    pixels in every patch (one-hot maps average-pooled with the patchifying kernel
    ``patch_size`` and ``stride``, patches row-major like the ViT tokens). Without
    them the patches tile the mask (kernel = stride = mask size / grid)."""
    if mask.dim() != 3:
        raise ValueError(f"patch_labels: expected part-label maps [B,H,W], got shape {tuple(mask.shape)}")
    height, width = mask.shape[-2:]
    gh, gw = grid
    if patch_size is not None:
        step = stride or patch_size
        pooled = ((height - patch_size) // step + 1, (width - patch_size) // step + 1)
        if pooled != (gh, gw):
            raise ValueError(f"patch_labels: {patch_size}-pixel patches at stride {step} over a {height}x{width} "
                             f"mask give a {pooled[0]}x{pooled[1]} grid, not the model's {gh}x{gw}")
    elif height % gh or width % gw:
        raise ValueError(f"patch_labels: a {height}x{width} mask does not tile into the {gh}x{gw} patch grid")
    if int(mask.min()) < 0 or int(mask.max()) >= num_labels:
        raise ValueError(f"patch_labels: mask labels must lie in 0..{num_labels - 1}, found "
                         f"{int(mask.min())}..{int(mask.max())}")
    one_hot = F.one_hot(mask.long(), num_labels).permute(0, 3, 1, 2).float()
    if patch_size is not None:
        return F.avg_pool2d(one_hot, kernel_size=patch_size, stride=stride or patch_size).flatten(2)
    tile = (height // gh, width // gw)
    return F.avg_pool2d(one_hot, kernel_size=tile, stride=tile).flatten(2)


def alignment_loss(scores: torch.Tensor, labels: torch.Tensor, background: str) -> torch.Tensor:
    """``L_align`` (Eq. 6): cross-entropy of the per-patch part scores ``[B,P,C]``
    against the soft patch labels ``[B,N+1,P]``. ``background="learned"``: C = N+1,
    class 0 is background; ``"ignore"``: C = N, background-dominated patches are
    skipped and the part fractions renormalised."""
    log_p = F.log_softmax(scores.float(), dim=-1)
    if background == "learned":
        return -(labels.transpose(1, 2) * log_p).sum(-1).mean()
    parts = labels[:, 1:].transpose(1, 2)
    keep = labels.argmax(dim=1) != 0
    if not bool(keep.any()):
        return scores.sum() * 0.0
    target = parts / parts.sum(-1, keepdim=True).clamp_min(1e-12)
    return -(target * log_p).sum(-1)[keep].mean()


def attention_target(part_labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """The ideal SPA attention of Eq. 9: ``softmax`` over the patches of each part's
    patch labels ``[B,N,P]`` divided by ``temperature`` (a part with no pixel gets
    a uniform target)."""
    return F.softmax(part_labels.float() / temperature, dim=-1)


def attention_loss(attn_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``L_attn`` (Eq. 9): cross-entropy between the target attention and SPA's
    attention ``softmax(logits)`` over the patches, summed over patches and
    averaged over images and parts."""
    return -(target * F.log_softmax(attn_logits.float(), dim=-1)).sum(-1).mean()


def diversity_loss(parts: torch.Tensor) -> torch.Tensor:
    """``L_div`` (Eq. 12) of part features ``[B,N,D]``: ``1/(N(N-1)) sum_{i<j}
    |cos(f_i, f_j)|``, averaged over the batch."""
    n = parts.shape[1]
    if n < 2:
        raise ValueError(f"diversity_loss needs at least 2 parts, got {n}")
    unit = F.normalize(parts.float(), dim=-1)
    cos = (unit @ unit.transpose(1, 2)).abs()
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool, device=parts.device), diagonal=1)
    return (cos[:, upper].sum(-1) / (n * (n - 1))).mean()


def visibility_loss(logits: torch.Tensor, visible: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """``L_vis`` (Eq. 13): the binary focal loss of Lin et al. on the per-part
    visibility logits, averaged over images and parts."""
    return sigmoid_focal_loss(logits.float(), visible.float(), alpha=alpha, gamma=gamma, reduction="mean")


def weighted_average_pool(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``WAP``: ``[B,P,D]`` patch features pooled with non-negative weights
    ``[B,N,P]`` into ``[B,N,D]``, ``sum_p w_np F_p / sum_p w_np`` (a part whose
    weights are all zero pools to the zero vector)."""
    return (weights @ features) / weights.sum(-1, keepdim=True).clamp_min(1e-6)


def visibility_weighted_distance(query: dict[str, torch.Tensor], gallery: dict[str, torch.Tensor]) -> torch.Tensor:
    """Eq. 14 between feature dicts (``global [n,D]``, ``parts [n,N,D]``,
    ``visibility [n,N]``): ``(sum_i v_i^q v_i^g d_i + d_g) / (sum_i v_i^q v_i^g + 1)``
    with cosine distances; ``[q, g]``."""
    for name, feats in (("query", query), ("gallery", gallery)):
        if not isinstance(feats, dict) or not {"global", "parts", "visibility"} <= set(feats):
            got = sorted(feats) if isinstance(feats, dict) else type(feats).__name__
            raise TypeError(f"ProFD distance: {name} must be a dict with 'global', 'parts' and 'visibility' "
                            f"(what ProFD.embed_image returns), got {got}")
    d_global = cosine_distance(query["global"].float(), gallery["global"].float())
    q_parts = F.normalize(query["parts"].float(), dim=-1)
    g_parts = F.normalize(gallery["parts"].float(), dim=-1)
    d_parts = 1.0 - torch.einsum("qnd,gnd->qgn", q_parts, g_parts)
    weight = query["visibility"].float()[:, None, :] * gallery["visibility"].float()[None, :, :]
    return ((weight * d_parts).sum(-1) + d_global) / (weight.sum(-1) + 1.0)


# --------------------------------------------------------------------------
# memory banks (Eqs. 15-18)


def _all_gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` over DDP ranks (identity without a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


class MemoryBank(nn.Module):
    """Identity centroids ``K [C, D]`` (rows L2-normalised) with momentum updates
    and the PCL loss of Eqs. 16/18.

    ``features`` and ``initialised`` are buffers so checkpoints carry them.
    """

    def __init__(self, num_classes: int, dim: int, momentum: float, update: str = "every") -> None:
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"MemoryBank: momentum must be in [0, 1], got {momentum}")
        if update not in ("every", "hardest"):
            raise ValueError(f"MemoryBank: update must be 'every' or 'hardest', got {update!r}")
        self.momentum = momentum
        self.update_rule = update
        self.register_buffer("features", torch.zeros(num_classes, dim))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def initialise(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Each row := the L2-normalised mean of its identity's ``features``."""
        num_classes = self.features.shape[0]
        labels = labels.to(self.features.device).long()
        counts = torch.bincount(labels, minlength=num_classes)
        if counts.numel() > num_classes:
            raise ValueError(f"MemoryBank: labels go up to {int(labels.max())} but the bank has {num_classes} rows")
        if bool((counts == 0).any()):
            missing = (counts == 0).nonzero().flatten()[:10].tolist()
            raise ValueError(f"MemoryBank: no training image for identities {missing} (of {num_classes}); the "
                             "initialisation pass must cover the whole training split")
        sums = torch.zeros_like(self.features).index_add_(0, labels, features.to(self.features))
        self.features.copy_(F.normalize(sums / counts[:, None], dim=1))
        self.initialised.fill_(True)

    def loss(self, x: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
        """PCL: ``-log softmax_j(cos(K_j, x) / tau)[y]`` averaged over the batch,
        against the bank as it is now (a copy: ``update`` may follow)."""
        if not bool(self.initialised):
            raise RuntimeError("MemoryBank used before initialisation; the harness calls begin_stage first")
        logits = F.normalize(x.float(), dim=1) @ self.features.clone().T / temperature
        return F.cross_entropy(logits, labels)

    @torch.no_grad()
    def update(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        """Eq. 15 / 17: ``K[y] <- m K[y] + (1 - m) x`` on L2-normalised ``x``, row
        renormalised; every sample in batch order, or once per identity with its
        hardest (least similar) sample.

        The result is the sequential per-sample loop's, computed in rounds: an identity's
        samples apply in batch order, different identities do not interact, so round ``r``
        applies every identity's ``r``-th sample at once (K rounds for a P x K batch instead
        of P x K tiny steps, each a host sync on a GPU)."""
        x = F.normalize(_all_gather(x.detach().float()), dim=1)
        labels = _all_gather(labels.detach()).long()
        if labels.numel() == 0:
            return
        if self.update_rule == "hardest":
            similarity = (x * self.features[labels]).sum(1)
            by_similarity = similarity.argsort(stable=True)
            grouped = by_similarity[labels[by_similarity].argsort(stable=True)]  # by identity, least similar first
            grouped_labels = labels[grouped]
            first = torch.ones_like(grouped, dtype=torch.bool)
            first[1:] = grouped_labels[1:] != grouped_labels[:-1]
            x, labels = x[grouped[first]], labels[grouped[first]]
        m = self.momentum
        earlier = (labels[:, None] == labels[None, :]).tril(-1).sum(1)  # same-identity samples before each
        for r in range(int(earlier.max()) + 1):
            now = earlier == r
            ys = labels[now]
            self.features[ys] = F.normalize(m * self.features[ys] + (1.0 - m) * x[now], dim=1)

    def extra_repr(self) -> str:
        c, d = self.features.shape
        return f"classes={c}, dim={d}, momentum={self.momentum}, update={self.update_rule!r}"


# --------------------------------------------------------------------------
# hybrid-attention decoder (Eqs. 7-11)


class SpatialAwareAttention(nn.Module):
    """SPA (Eq. 8): one head, ``softmax(E_pro (E_pat W_k)^T / sqrt(d)) E_pat W_v``.
    Returns the output and the attention logits ``[B,N,P]`` that ``L_attn``
    supervises."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.scale = dim ** -0.5

    def forward(self, queries: torch.Tensor, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = queries @ self.key(patches).transpose(1, 2) * self.scale
        attn = self.dropout(logits.softmax(dim=-1))
        return attn @ self.value(patches), logits


class HybridAttentionLayer(nn.Module):
    """One block of Fig. 3 (see the module docstring for the Add & Norm placement)."""

    def __init__(self, dim: int, heads: int, dropout: float, use_sea: bool, use_spa: bool) -> None:
        super().__init__()
        if not (use_sea or use_spa):
            raise ValueError("HybridAttentionLayer needs SEA, SPA or both (attention='none' builds no decoder)")
        self.reverse_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_patches = nn.LayerNorm(dim)
        self.sea = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True) if use_sea else None
        self.spa = SpatialAwareAttention(dim, dropout) if use_spa else None
        self.norm_hybrid = nn.LayerNorm(dim)
        self.final_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_final = nn.LayerNorm(dim)
        self.ffn = Mlp(dim, 4 * dim, dim, act=nn.GELU, dropout=dropout)
        self.dropout = nn.Dropout(dropout)
        self.norm_ffn = nn.LayerNorm(dim)

    def forward(self, queries: torch.Tensor, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        # Eq. 7: patch tokens absorb the prompts.
        updated = self.norm_patches(patches + self.reverse_attn(patches, queries, queries, need_weights=False)[0])
        # Eqs. 8 and 10, summed.
        hybrid = queries
        spa_logits = None
        if self.spa is not None:
            spa_out, spa_logits = self.spa(queries, patches)
            hybrid = hybrid + spa_out
        if self.sea is not None:
            hybrid = hybrid + self.sea(queries, patches, patches, need_weights=False)[0]
        x = self.norm_hybrid(hybrid)
        # Eq. 11: attend to the updated patch tokens, then the FFN.
        x = self.norm_final(x + self.final_attn(x, updated, updated, need_weights=False)[0])
        x = self.norm_ffn(x + self.dropout(self.ffn(x)))
        return x, spa_logits


class HybridAttentionDecoder(nn.Module):
    """Part prompts ``[N,d]`` (queries) x patch features ``[B,P,d]`` -> part
    features ``F_p [B,N,d]`` and each layer's SPA logits (empty without SPA)."""

    def __init__(self, dim: int, layers: int, heads: int, dropout: float, use_sea: bool, use_spa: bool) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"decoder width {dim} (the CLIP embed_dim) is not divisible by decoder_heads={heads}")
        if layers < 1:
            raise ValueError(f"decoder_layers must be >= 1, got {layers}")
        self.query_norm = nn.LayerNorm(dim)
        self.memory_norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(HybridAttentionLayer(dim, heads, dropout, use_sea, use_spa) for _ in range(layers))

    def forward(self, prompts: torch.Tensor, patches: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.query_norm(prompts).expand(patches.shape[0], -1, -1)
        memory = self.memory_norm(patches)
        spa_logits = []
        for layer in self.layers:
            x, logits = layer(x, memory)
            if logits is not None:
                spa_logits.append(logits)
        return x, spa_logits


class PartScores(nn.Module):
    """``S`` (Eq. 5): scaled cosine of every patch feature with every class
    embedding ``[B,P,C]``: a learned background embedding first (class 0, when
    ``learned_background``), then the N part prompts."""

    def __init__(self, dim: int, learned_background: bool, scale: float) -> None:
        super().__init__()
        self.scale = scale
        if learned_background:
            self.background = nn.Parameter(torch.randn(dim) * dim ** -0.5)
        else:
            self.register_parameter("background", None)

    def forward(self, patches: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        classes = prompts if self.background is None else torch.cat([self.background[None].to(prompts), prompts])
        return self.scale * (F.normalize(patches, dim=-1) @ F.normalize(classes, dim=-1).T)


class PartVisibility(nn.Module):
    """N independent binary classifiers (one linear unit per part) -> logits ``[B,N]``."""

    def __init__(self, num_parts: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_parts, dim) * dim ** -0.5)
        self.bias = nn.Parameter(torch.zeros(num_parts))

    def forward(self, parts: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bnd,nd->bn", parts, self.weight) + self.bias


# --------------------------------------------------------------------------
# config


@dataclass
class ProFDLossWeights:
    """Weights of Eq. 19's terms (the paper: all 1). ``id`` and ``triplet`` weigh the
    global and the concatenated-part terms alike; ``pcl`` both memory banks."""

    id: float = 1.0
    triplet: float = 1.0
    div: float = 1.0
    pcl: float = 1.0
    align: float = 1.0
    attn: float = 1.0
    vis: float = 1.0


@dataclass
class ProFDConfig(PresetConfig):
    """Hyperparameters and ablation switches; defaults are the paper's values."""

    # part-specific prompts (Eq. 4)
    n_ctx: int = 16  # M; the paper does not say, the official code uses 16
    part_names: tuple[str, ...] = PART_NAMES
    part_specific_ctx: bool = False  # Eq. 4 shares the prefix; True: one per part (CoOp's CSC)
    ctx_init_std: float = 0.02
    # spatial-level alignment (Eqs. 5-6) -- Table 5
    use_align: bool = True
    background: Literal["learned", "ignore"] = "learned"
    align_logit_scale: float = 5.0
    # hybrid-attention decoder (Eqs. 7-11) -- Table 3
    attention: Literal["none", "sea", "spa", "both"] = "both"
    decoder_layers: int = 2
    decoder_heads: int = 8
    decoder_dropout: float = 0.1
    attn_target_temperature: float = 0.1
    # diversity (Eq. 12) -- Table 5
    use_div: bool = True
    # visibility (Eqs. 13-14)
    focal_alpha: float = 0.65
    focal_gamma: float = 2.0
    test_visibility: Literal["score", "binary"] = "score"
    visibility_floor: float = 0.1
    # general knowledge preservation (Eqs. 15-18) -- Table 4, Fig. 4
    memory_bank: Literal["none", "global", "part", "both"] = "both"
    m_g: float = 0.2
    m_p: float = 0.2
    pcl_temperature: float = 0.05
    bank_update: Literal["every", "hardest"] = "every"
    # ReID losses and features (Eq. 19)
    label_smoothing: float = 0.1
    triplet_margin: float = 0.3
    sie: bool = True  # use the backbone's camera embedding when it has one
    neck_feat: Literal["before", "after"] = "before"
    weights: ProFDLossWeights = field(default_factory=ProFDLossWeights)
    # schedule (single stage)
    epochs: int = 120
    lr: float = 5e-5
    weight_decay: float = 5e-4
    milestones: tuple[int, ...] = (30, 50)
    gamma: float = 0.1
    warmup_epochs: int = 10
    warmup_factor: float = 0.1
    schedule_offset: int = 1  # CLIP-ReID's WarmupMultiStepLR, stepped at the start of each epoch (Stage)
    new_module_lr_mult: float = 1.0  # lr multiplier of everything outside the CLIP backbone

    # tiny: the CPU default benchmark (tiny CLIP, 128x64, 8x4 patches, P8 x K4), on the
    # same image-encoder schedule as clip_reid's / baseline's tiny presets so that the
    # rows of a comparison differ by the method, not by the training budget.
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"n_ctx": 4, "epochs": 12, "lr": TINY_IMAGE_LR, "warmup_epochs": 2, "milestones": [8, 11],
                 "new_module_lr_mult": 10.0},
    }


# --------------------------------------------------------------------------
# the method


@dataclass
class ProFDOutput:
    """What one forward pass computes."""

    global_feat: torch.Tensor  # F_g [B,d]
    patches: torch.Tensor  # F [B,P,d] (projected patch tokens)
    parts: torch.Tensor  # F_p [B,N,d]
    visibility_logits: torch.Tensor  # [B,N]
    scores: torch.Tensor | None  # S [B,P,C] (Eq. 5), when alignment or parsing pooling needs it
    spa_logits: list[torch.Tensor]  # per decoder layer [B,N,P]


@register_method
class ProFD(Method):
    """Prompt-guided feature disentangling (see the module docstring)."""

    name = "profd"
    requires = ("mask",)
    config_cls = ProFDConfig
    PRESETS = {"paper": ProFDConfig.preset("paper"), "tiny": ProFDConfig.preset("tiny")}
    DATA_RECIPE = {"pixel_mean": CLIP_REID_MEAN, "pixel_std": CLIP_REID_STD, "crop_p": 0.5}

    def __init__(self, config: ProFDConfig, backbone: nn.Module, spec: DataSpec) -> None:
        super().__init__(config, backbone, spec)
        num_classes = spec.num_classes
        cfg = config
        if len(cfg.part_names) != NUM_PARTS:
            raise ValueError(f"ProFD: part_names must name the {NUM_PARTS} mask parts (labels 1..{NUM_PARTS}), "
                             f"got {len(cfg.part_names)}: {cfg.part_names}")
        dim = backbone.embed_dim
        self.grid = tuple(backbone.patch_grid)
        # A backbone that names no patch size is taken to tile the image (kernel = stride).
        self.patch_size = getattr(backbone, "patch_size", None)
        self.patch_stride = getattr(backbone, "patch_stride", self.patch_size)
        self.prompt_learner = PromptLearner(backbone.token_embedding, backbone.tokenizer, NUM_PARTS, n_ctx=cfg.n_ctx,
                                            template="{ctx} {name}.", class_names=cfg.part_names,
                                            class_specific=cfg.part_specific_ctx, init_std=cfg.ctx_init_std)
        self.alignment = PartScores(dim, cfg.use_align and cfg.background == "learned", cfg.align_logit_scale)
        if cfg.attention == "none":
            self.decoder = None
        else:
            self.decoder = HybridAttentionDecoder(dim, cfg.decoder_layers, cfg.decoder_heads, cfg.decoder_dropout,
                                                  use_sea=cfg.attention in ("sea", "both"),
                                                  use_spa=cfg.attention in ("spa", "both"))
        self.visibility = PartVisibility(NUM_PARTS, dim)
        self.neck_global = BNNeck(dim, num_classes)
        self.neck_parts = BNNeck(NUM_PARTS * dim, num_classes)
        self.id_loss = CrossEntropyLabelSmooth(cfg.label_smoothing)
        self.triplet = TripletLoss(cfg.triplet_margin)
        use_g = cfg.memory_bank in ("global", "both")
        use_p = cfg.memory_bank in ("part", "both")
        self.global_bank = MemoryBank(num_classes, dim, cfg.m_g, cfg.bank_update) if use_g else None
        self.part_bank = MemoryBank(num_classes, NUM_PARTS * dim, cfg.m_p, cfg.bank_update) if use_p else None

    # -- stages ------------------------------------------------------------
    def new_module_prefixes(self) -> tuple[str, ...]:
        """Parameter-name prefixes of everything ProFD adds to CLIP."""
        return tuple(f"{name}." for name, module in self.named_children()
                     if name != "backbone" and any(True for _ in module.parameters()))

    def stages(self) -> list[Stage]:
        cfg = self.config
        w = cfg.weights
        new = self.new_module_prefixes()
        weights = (("id_global", w.id), ("id_parts", w.id), ("triplet_global", w.triplet),
                   ("triplet_parts", w.triplet), ("div", w.div), ("pcl_global", w.pcl), ("pcl_parts", w.pcl),
                   ("align", w.align), ("attn", w.attn), ("vis", w.vis))
        groups = tuple((p, cfg.new_module_lr_mult) for p in new) if cfg.new_module_lr_mult != 1.0 else ()
        return [Stage(name=TRAIN_STAGE, epochs=cfg.epochs, lr=cfg.lr,
                      trainable=(*image_side_prefixes(self.backbone), *new), optimizer="adam",
                      weight_decay=cfg.weight_decay, schedule="steps", warmup_epochs=cfg.warmup_epochs,
                      warmup_factor=cfg.warmup_factor, milestones=tuple(cfg.milestones), gamma=cfg.gamma,
                      schedule_offset=cfg.schedule_offset, param_groups=groups, loss_weights=weights)]

    @torch.no_grad()
    def begin_stage(self, stage: Stage, train_batches: Callable[[], Iterable[dict]]) -> None:
        """Initialise the memory banks (Eqs. 15, 17) from the un-augmented training
        split; banks already initialised (a resumed run) are kept."""
        if stage.name != TRAIN_STAGE:
            raise ValueError(f"profd has one stage {TRAIN_STAGE!r}, got {stage.name!r}")
        banks = [b for b in (self.global_bank, self.part_bank) if b is not None]
        if all(bool(b.initialised) for b in banks):
            return
        was_training = self.training
        self.eval()
        try:
            globals_, parts, labels = [], [], []
            for batch in train_batches():
                self._require_masks(batch, "initialising the part memory bank")
                out = self.forward_features(batch)
                globals_.append(self.neck_global(out.global_feat)[0].float())
                if self.part_bank is not None:
                    weights = self.patch_labels(batch["mask"])[:, 1:]
                    pooled = weighted_average_pool(out.patches.float(), weights)
                    parts.append(self.neck_parts(pooled.flatten(1))[0].float())
                labels.append(batch["pid"])
            if not labels:
                raise ValueError("profd: train_batches() gave no batch to initialise the memory banks from")
            labels_t = torch.cat(labels)
            if self.global_bank is not None:
                self.global_bank.initialise(torch.cat(globals_), labels_t)
            if self.part_bank is not None:
                self.part_bank.initialise(torch.cat(parts), labels_t)
        finally:
            self.train(was_training)

    def patch_labels(self, mask: torch.Tensor) -> torch.Tensor:
        """:func:`patch_labels` for this backbone's patch size and stride."""
        return patch_labels(mask, self.grid, patch_size=self.patch_size, stride=self.patch_stride)

    # -- forward -------------------------------------------------------------
    def prompt_embeddings(self) -> torch.Tensor:
        """``E_pro [N, d]`` (Eq. 4) through the frozen text encoder."""
        embeds, eos = self.prompt_learner()
        return self.backbone.encode_text_embeddings(embeds, eos)

    def forward_features(self, batch: dict) -> ProFDOutput:
        cfg = self.config
        feats = encode_images(self.backbone, batch, cfg.sie)
        patches = self.backbone.visual_projection(feats.tokens[:, 1:])
        if patches.shape[1] != self.grid[0] * self.grid[1]:
            raise ValueError(f"ProFD: {patches.shape[1]} patch tokens for a {self.grid[0]}x{self.grid[1]} patch grid")
        prompts = self.prompt_embeddings().to(patches.dtype)
        need_scores = cfg.use_align or self.decoder is None
        scores = self.alignment(patches, prompts) if need_scores else None
        if self.decoder is not None:
            parts, spa_logits = self.decoder(prompts, patches)
        else:
            # Table 3, row 0: weighted average pooling by the predicted parsing.
            parsing = scores.softmax(dim=-1)[..., -NUM_PARTS:].transpose(1, 2)
            parts, spa_logits = weighted_average_pool(patches, parsing), []
        return ProFDOutput(feats.proj, patches, parts, self.visibility(parts), scores, spa_logits)

    # -- training ------------------------------------------------------------
    def training_step(self, batch: dict, stage: Stage) -> dict[str, torch.Tensor]:
        if stage.name != TRAIN_STAGE:
            raise ValueError(f"profd has one stage {TRAIN_STAGE!r}, got {stage.name!r}")
        cfg = self.config
        self._require_masks(batch, "training")
        pids = batch["pid"]
        out = self.forward_features(batch)
        concat = out.parts.flatten(1)
        global_bn, global_logits = self.neck_global(out.global_feat)
        parts_bn, parts_logits = self.neck_parts(concat)
        terms = {
            "id_global": self.id_loss(global_logits, pids),
            "triplet_global": self.triplet(out.global_feat, pids),
            "id_parts": self.id_loss(parts_logits, pids),
            "triplet_parts": self.triplet(concat, pids),
        }
        if cfg.use_div:
            terms["div"] = diversity_loss(out.parts)
        if self.global_bank is not None:
            terms["pcl_global"] = self.global_bank.loss(global_bn, pids, cfg.pcl_temperature)
            self.global_bank.update(global_bn, pids)
        if self.part_bank is not None:
            terms["pcl_parts"] = self.part_bank.loss(parts_bn, pids, cfg.pcl_temperature)
            self.part_bank.update(parts_bn, pids)
        labels = self.patch_labels(batch["mask"])
        if cfg.use_align:
            terms["align"] = alignment_loss(out.scores, labels, cfg.background)
        if out.spa_logits:
            target = attention_target(labels[:, 1:], cfg.attn_target_temperature)
            terms["attn"] = torch.stack([attention_loss(lg, target) for lg in out.spa_logits]).mean()
        terms["vis"] = visibility_loss(out.visibility_logits, batch["visible"], cfg.focal_alpha, cfg.focal_gamma)
        return terms

    @staticmethod
    def _require_masks(batch: dict, what: str) -> None:
        if "mask" not in batch or "visible" not in batch:
            raise ValueError(f"profd: {what} needs part masks: the batch has no 'mask'/'visible' keys. ProFD trains "
                             "with a part-label map per training image (Sample.mask_path; see the profd module "
                             "docstring for the layout)")
        has = batch.get("has_mask")
        if has is not None and not bool(torch.as_tensor(has).all()):
            missing = int((~torch.as_tensor(has)).sum())
            raise ValueError(f"profd: {what} needs a part mask for every training image, but {missing} of "
                             f"{len(has)} images in this batch have none (Sample.mask_path is unset); write masks "
                             "for the training split (layout in the profd module docstring)")

    # -- inference -------------------------------------------------------------
    def embed_image(self, batch: dict) -> dict[str, torch.Tensor]:
        """``{"global": [B,d], "parts": [B,N,d], "visibility": [B,N]}``; visibility is
        predicted (``batch["mask"]`` is never read here)."""
        cfg = self.config
        out = self.forward_features({k: v for k, v in batch.items() if k not in ("mask", "visible", "parsing")})
        global_feat, parts = out.global_feat, out.parts
        if cfg.neck_feat == "after":
            global_feat = self.neck_global(global_feat)[0]
            parts = self.neck_parts(parts.flatten(1))[0].view_as(parts)
        prob = out.visibility_logits.float().sigmoid()
        if cfg.test_visibility == "binary":
            visibility = (prob >= 0.5).float()
        else:
            visibility = torch.where(prob < cfg.visibility_floor, torch.zeros_like(prob), prob)
        return {"global": global_feat.float(), "parts": parts.float(), "visibility": visibility}

    def distance(self, query: dict[str, torch.Tensor], gallery: dict[str, torch.Tensor]) -> torch.Tensor:
        """Eq. 14 (see :func:`visibility_weighted_distance`)."""
        return visibility_weighted_distance(query, gallery)


__all__ = [
    "HybridAttentionDecoder",
    "MemoryBank",
    "NUM_PARTS",
    "PartScores",
    "PartVisibility",
    "PART_NAMES",
    "ProFD",
    "ProFDConfig",
    "ProFDLossWeights",
    "ProFDOutput",
    "SpatialAwareAttention",
    "alignment_loss",
    "attention_loss",
    "attention_target",
    "diversity_loss",
    "patch_labels",
    "visibility_loss",
    "visibility_weighted_distance",
    "weighted_average_pool",
]
