"""Building blocks shared by the CLIP-ReID family of methods.

Everything here follows the community reference code so that numbers are
comparable with published ones:

* ``TripletLoss`` / ``euclidean_dist`` / ``hard_example_mining``: TransReID and
  CLIP-ReID's ``loss/triplet_loss.py`` (batch-hard mining on euclidean
  distances, margin ranking or soft margin), generalised to batches whose
  identities have unequal image counts (fast-reid's masked mining).
* ``CrossEntropyLabelSmooth``: Szegedy et al.'s label smoothing exactly as in
  bag-of-tricks / CLIP-ReID (``(1-eps) * onehot + eps / K``).
* ``BNNeck``: bag-of-tricks (Luo et al. 2019): BatchNorm1d with a frozen zero
  bias, then a bias-free classifier; kaiming / normal(0.001) init.
* ``supcon_loss`` / ``i2t_t2i_losses``: CLIP-ReID's ``SupConLoss`` (stage 1).
* ``PromptLearner``: CLIP-ReID's per-identity context tokens and CoOp's shared
  context (ProFD's part prompts, CCAF's clothes prompts).
* ``DualNeckHead``: CLIP-ReID's stage-2 head (BNNecks on the CLS feature and on
  its projection), reused by the baseline and by methods built on CLIP-ReID.

A backbone here is anything with the ``ReidCLIP`` API (``reidbench.backbones``):
``encode_image(pixels, camids) -> ImageFeatures(tokens, cls, proj)``,
``encode_text_embeddings(token_embeds, eos_index)``, ``token_embedding`` and
``tokenizer``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import Stage

# --------------------------------------------------------------------------
# distances


def cosine_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[M,D] x [N,D] -> [M,N]`` cosine distance ``1 - cos``, in [0, 2]."""
    return 1.0 - F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).T


def euclidean_dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[M,D] x [N,D] -> [M,N]`` euclidean distances.

    Computed as CLIP-ReID / TransReID do (``|x|^2 + |y|^2 - 2 x.y``, clamped at
    1e-12 before the square root) so the diagonal of a self-distance matrix is
    1e-6, not 0, and its gradient stays finite.
    """
    xx = x.pow(2).sum(1, keepdim=True)
    yy = y.pow(2).sum(1, keepdim=True).T
    dist = xx + yy - 2.0 * (x @ y.T)
    return dist.clamp(min=1e-12).sqrt()


# --------------------------------------------------------------------------
# metric learning


def hard_example_mining(dist: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch-hard mining (Hermans et al. 2017) on a square distance matrix.

    Returns ``(dist_ap, dist_an, valid)``: for each anchor the largest distance to
    a same-label sample (the anchor itself included, as in the reference code, so
    an identity seen once gets ``dist_ap`` ~ 0), the smallest distance to an
    other-label sample, and whether the anchor has any negative at all. Works for
    any label counts (the reference ``view(N, -1)`` needs P x K batches).
    """
    if dist.dim() != 2 or dist.shape[0] != dist.shape[1] or dist.shape[0] != labels.shape[0]:
        raise ValueError(f"hard_example_mining: expected an [N,N] distance matrix and [N] labels, "
                         f"got {tuple(dist.shape)} and {tuple(labels.shape)}")
    is_pos = labels[:, None] == labels[None, :]
    dist_ap = dist.masked_fill(~is_pos, float("-inf")).max(dim=1).values
    dist_an = dist.masked_fill(is_pos, float("inf")).min(dim=1).values
    valid = (~is_pos).any(dim=1)
    return dist_ap, dist_an, valid


class TripletLoss(nn.Module):
    """Batch-hard triplet loss on euclidean distances.

    ``margin`` > 0: ``mean(max(0, d_ap - d_an + margin))`` (``MarginRankingLoss``);
    ``margin=None``: soft margin ``mean(log(1 + exp(d_ap - d_an)))`` (``SoftMarginLoss``,
    the reference code's ``NO_MARGIN``). ``normalize_feature`` L2-normalises the
    features first (the reference switch of the same name). Anchors without a
    negative in the batch are skipped; a batch with none left gives a zero loss
    that is still attached to the graph.
    """

    def __init__(self, margin: float | None = 0.3, normalize_feature: bool = False) -> None:
        super().__init__()
        if margin is not None and margin < 0:
            raise ValueError(f"TripletLoss: margin must be >= 0 or None (soft margin), got {margin}")
        self.margin = margin
        self.normalize_feature = normalize_feature

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.normalize_feature:
            features = F.normalize(features, dim=-1)
        dist = euclidean_dist(features.float(), features.float())
        dist_ap, dist_an, valid = hard_example_mining(dist, labels)
        if not bool(valid.any()):
            return features.sum() * 0.0
        dist_ap, dist_an = dist_ap[valid], dist_an[valid]
        target = torch.ones_like(dist_an)
        if self.margin is None:
            return F.soft_margin_loss(dist_an - dist_ap, target)
        return F.margin_ranking_loss(dist_an, dist_ap, target, margin=self.margin)

    def extra_repr(self) -> str:
        return f"margin={'soft' if self.margin is None else self.margin}, normalize_feature={self.normalize_feature}"


class CrossEntropyLabelSmooth(nn.Module):
    """Cross entropy with label smoothing: targets ``(1-eps) * onehot + eps / K``.

    This is the bag-of-tricks / CLIP-ReID ``CrossEntropyLabelSmooth``; it equals
    ``F.cross_entropy(label_smoothing=eps)``, which does the work here.
    """

    def __init__(self, epsilon: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= epsilon < 1.0:
            raise ValueError(f"CrossEntropyLabelSmooth: epsilon must be in [0, 1), got {epsilon}")
        self.epsilon = epsilon

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.epsilon)


def supcon_loss(anchors: torch.Tensor, contrasts: torch.Tensor, anchor_labels: torch.Tensor,
                contrast_labels: torch.Tensor, temperature: float = 1.0, normalize: bool = False) -> torch.Tensor:
    """Supervised contrastive loss of CLIP-ReID's ``SupConLoss``.

    For anchor ``i``: ``-mean_{p: y_p = y_i} log softmax_j(<a_i, c_j> / T)[p]``,
    the softmax running over every contrast ``j`` in the batch; averaged over the
    anchors. The reference code uses raw (unnormalised) features and T = 1; the
    paper writes a similarity ``s(.,.)`` without saying which, so ``normalize``
    (cosine similarity) and ``temperature`` are switches. Anchors with no
    positive among the contrasts are left out of the mean (in CLIP-ReID's use
    every anchor has one: its own pair).
    """
    if anchors.shape[-1] != contrasts.shape[-1]:
        raise ValueError(f"supcon_loss: anchors and contrasts must share a feature size, got "
                         f"{tuple(anchors.shape)} and {tuple(contrasts.shape)}")
    if normalize:
        anchors, contrasts = F.normalize(anchors, dim=-1), F.normalize(contrasts, dim=-1)
    logits = (anchors.float() @ contrasts.float().T) / temperature
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    mask = (anchor_labels[:, None] == contrast_labels[None, :]).float()
    n_pos = mask.sum(1)
    has_pos = n_pos > 0
    if not bool(has_pos.any()):
        raise ValueError("supcon_loss: no anchor has a positive (same label) among the contrasts")
    mean_log_prob_pos = (mask * log_prob).sum(1)[has_pos] / n_pos[has_pos]
    return -mean_log_prob_pos.mean()


def i2t_t2i_losses(image_features: torch.Tensor, text_features: torch.Tensor, labels: torch.Tensor,
                   temperature: float = 1.0, normalize: bool = False) -> dict[str, torch.Tensor]:
    """CLIP-ReID stage-1 losses for a batch of (image, its identity's text) pairs.

    ``i2t``: each image against the batch's texts, positives = texts of its
    identity; ``t2i``: each text against the batch's images, positives = images
    of its identity (the reference calls ``xent(img, txt, y, y)`` and
    ``xent(txt, img, y, y)``).
    """
    return {
        "i2t": supcon_loss(image_features, text_features, labels, labels, temperature, normalize),
        "t2i": supcon_loss(text_features, image_features, labels, labels, temperature, normalize),
    }


# --------------------------------------------------------------------------
# heads


def weights_init_kaiming(module: nn.Module) -> None:
    """bag-of-tricks init: kaiming for linear/conv, BatchNorm weight 1 bias 0."""
    if isinstance(module, nn.Linear):
        nn.init.kaiming_normal_(module.weight, a=0, mode="fan_out")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if module.affine:
            nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def weights_init_classifier(module: nn.Module) -> None:
    """bag-of-tricks classifier init: normal(0, 0.001), zero bias."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.001)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class BNNeck(nn.Module):
    """BatchNorm1d with a frozen zero bias, then a bias-free identity classifier.

    The bias is a zero *buffer* rather than a parameter with
    ``requires_grad=False``: a trainer that sets ``requires_grad`` by name
    prefix per stage would otherwise silently unfreeze it. The state-dict key
    (``bn.bias``) is the reference one.

    ``forward(x) -> (x_bn, logits)``; ``logits`` is ``None`` when
    ``num_classes`` is 0 (a neck without classifier).
    """

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)
        del self.bn.bias
        self.bn.register_buffer("bias", torch.zeros(dim))
        weights_init_kaiming(self.bn)
        self.classifier = nn.Linear(dim, num_classes, bias=False) if num_classes > 0 else None
        if self.classifier is not None:
            weights_init_classifier(self.classifier)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x_bn = self.bn(x)
        logits = self.classifier(x_bn) if self.classifier is not None else None
        return x_bn, logits


@dataclass
class HeadOutput:
    """What ``DualNeckHead`` computes from one image batch."""

    cls: torch.Tensor  # [B, vision_width] CLS token (before BN)
    proj: torch.Tensor  # [B, embed_dim] projected CLS (before BN)
    cls_bn: torch.Tensor
    proj_bn: torch.Tensor
    logits: tuple[torch.Tensor, torch.Tensor]  # identity logits on cls_bn and proj_bn
    penultimate: torch.Tensor | None = None  # [B, vision_width] CLS of the penultimate layer, if asked for


class DualNeckHead(nn.Module):
    """CLIP-ReID's stage-2 head: a BNNeck on the CLS feature (vision width) and
    one on its projection (embedding width), each with an identity classifier.

    ``inference_feature`` is ``concat(cls, proj)`` with ``neck_feat="before"``
    (the official ``configs/person/vit_clipreid.yml`` sets ``TEST.NECK_FEAT:
    'before'``) or ``concat(cls_bn, proj_bn)`` with ``"after"`` (bag-of-tricks'
    default). Ranking uses cosine distance on it, which equals the official
    ``FEAT_NORM: 'yes'`` + euclidean ranking.
    """

    def __init__(self, vision_width: int, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.neck_cls = BNNeck(vision_width, num_classes)
        self.neck_proj = BNNeck(embed_dim, num_classes)

    def forward(self, image_features: Any) -> HeadOutput:
        """``image_features``: the backbone's ``ImageFeatures``; when it carries
        ``hidden_states`` (``encode_image(..., return_hidden=True)``) the
        penultimate layer's CLS token is passed on for the triplet loss."""
        cls, proj = image_features.cls, image_features.proj
        cls_bn, logits_cls = self.neck_cls(cls)
        proj_bn, logits_proj = self.neck_proj(proj)
        hidden = getattr(image_features, "hidden_states", None)
        penultimate = hidden[-2][:, 0] if hidden is not None and len(hidden) >= 2 else None
        return HeadOutput(cls, proj, cls_bn, proj_bn, (logits_cls, logits_proj), penultimate)

    @staticmethod
    def inference_feature(out: HeadOutput, neck_feat: str) -> torch.Tensor:
        if neck_feat == "before":
            return torch.cat([out.cls, out.proj], dim=1)
        if neck_feat == "after":
            return torch.cat([out.cls_bn, out.proj_bn], dim=1)
        raise ValueError(f"neck_feat must be 'before' or 'after', got {neck_feat!r}")


# --------------------------------------------------------------------------
# prompts


class PromptLearner(nn.Module):
    """Learnable context tokens spliced into a text template (CoOp / CLIP-ReID).

    ``template`` holds one ``{ctx}`` placeholder, replaced by ``n_ctx`` learnable
    vectors in the token-embedding space, and optionally one ``{name}``
    placeholder after it, replaced by ``class_names[c]`` (ProFD's part names).
    CLIP-ReID is ``"a photo of a {ctx} person."`` with ``class_specific=True``:
    every identity owns its ``n_ctx`` vectors ("A photo of a X X X X person.").
    ``class_specific=False`` shares one context across classes (CoOp).

    ``forward(labels)`` returns ``(token_embeds [B,L,width], eos_index [B])`` for
    ``backbone.encode_text_embeddings``: ``[BOS] prefix ctx suffix [EOS]`` with
    the fixed words embedded by the backbone's (frozen) token embedding at call
    time, so they always match the backbone's current weights. The token
    embedding is held by reference, not registered, so its weights appear once in
    the state dict (under the backbone). Sequences end at the longest prompt's
    EOS rather than padding to the context length: the text encoder is causal, so
    positions after EOS never affect the pooled EOS feature
    (``pad_to_context=True`` pads anyway). Context vectors start as N(0, init_std^2)
    (CLIP-ReID: 0.02).
    """

    def __init__(self, token_embedding: nn.Embedding, tokenizer: Any, num_classes: int, n_ctx: int = 4,
                 template: str = "a photo of a {ctx} person.", class_names: Sequence[str] | None = None,
                 class_specific: bool = True, init_std: float = 0.02, pad_to_context: bool = False) -> None:
        super().__init__()
        if n_ctx < 1:
            raise ValueError(f"PromptLearner: n_ctx must be >= 1, got {n_ctx}")
        if template.count("{ctx}") != 1:
            raise ValueError(f"PromptLearner: template must contain '{{ctx}}' exactly once, got {template!r}")
        before, after = template.split("{ctx}")
        if "{name}" in before:
            raise ValueError(f"PromptLearner: '{{name}}' must come after '{{ctx}}' in the template, got {template!r}")
        if ("{name}" in after) != (class_names is not None):
            raise ValueError("PromptLearner: give class_names exactly when the template has a '{name}' placeholder "
                             f"(template {template!r}, class_names {'given' if class_names is not None else 'None'})")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"PromptLearner: {len(class_names)} class_names for num_classes={num_classes}")
        if num_classes < 1:
            raise ValueError(f"PromptLearner: num_classes must be >= 1, got {num_classes}")

        self.__dict__["_token_embedding"] = token_embedding  # by reference: not a submodule
        self.num_classes = num_classes
        self.n_ctx = n_ctx
        self.class_specific = class_specific
        self.template = template

        prefix_ids = [tokenizer.bos_token_id, *tokenizer.encode_words(before.strip())]
        names = class_names if class_names is not None else [None]
        rows = []
        for name in names:
            suffix = after.replace("{name}", name) if name is not None else after
            rows.append(prefix_ids + [tokenizer.pad_token_id] * n_ctx
                        + [*tokenizer.encode_words(suffix.strip()), tokenizer.eos_token_id])
        length = tokenizer.context_length if pad_to_context else max(len(r) for r in rows)
        if max(len(r) for r in rows) > tokenizer.context_length:
            raise ValueError(f"PromptLearner: prompt of {max(len(r) for r in rows)} tokens exceeds the text "
                             f"encoder's context length {tokenizer.context_length} (template {template!r})")
        ids = torch.full((len(rows), length), tokenizer.pad_token_id, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
        self.ctx_start = len(prefix_ids)
        self.register_buffer("token_ids", ids, persistent=False)
        self.register_buffer("eos_index", torch.tensor([len(r) - 1 for r in rows]), persistent=False)

        width = token_embedding.weight.shape[1]
        shape = (num_classes, n_ctx, width) if class_specific else (n_ctx, width)
        self.ctx = nn.Parameter(torch.empty(shape))
        nn.init.normal_(self.ctx, std=init_std)

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.__dict__["_token_embedding"]

    def forward(self, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts for class ``labels`` ([B] long); ``None``: every class in order."""
        if labels is None:
            labels = torch.arange(self.num_classes, device=self.ctx.device)
        if self.class_specific:
            ctx = self.ctx[labels]
        else:
            ctx = self.ctx.unsqueeze(0).expand(labels.shape[0], -1, -1)
        return self.assemble(ctx, labels)

    def assemble(self, ctx: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Splice given context vectors ``ctx [B,n_ctx,width]`` into the prompts of
        ``labels``: the hook for methods that condition the context (e.g. SCING
        fuses visual features into it)."""
        if ctx.shape[1] != self.n_ctx:
            raise ValueError(f"PromptLearner.assemble: expected {self.n_ctx} context vectors, got {tuple(ctx.shape)}")
        row = labels if self.token_ids.shape[0] > 1 else torch.zeros_like(labels)
        ids = self.token_ids[row]
        fixed = self.token_embedding(ids)
        s, e = self.ctx_start, self.ctx_start + self.n_ctx
        embeds = torch.cat([fixed[:, :s], ctx.to(fixed.dtype), fixed[:, e:]], dim=1)
        return embeds, self.eos_index[row]

    def extra_repr(self) -> str:
        return (f"template={self.template!r}, n_ctx={self.n_ctx}, num_classes={self.num_classes}, "
                f"class_specific={self.class_specific}")


# --------------------------------------------------------------------------
# feature caches


class FeatureBank:
    """Features computed once before a stage, looked up by row (CLIP-ReID caches
    frozen image features by training index for stage 1, and identity text
    features by pid for stage 2).

    A plain object, not a buffer: it is a deterministic function of the
    checkpointed weights and the data, so ``begin_stage`` rebuilds it (also on
    resume) rather than the checkpoint carrying it, and DDP must not broadcast
    it every step. ``labels`` (optional) are checked on lookup, which catches a
    training loader whose ``index`` does not match the cached split.
    """

    def __init__(self, features: torch.Tensor, labels: torch.Tensor | None = None,
                 filled: torch.Tensor | None = None, what: str = "features") -> None:
        self.features = features
        self.labels = labels
        self.filled = filled if filled is not None else torch.ones(features.shape[0], dtype=torch.bool,
                                                                   device=features.device)
        self.what = what

    @classmethod
    def from_batches(cls, batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], what: str) -> FeatureBank:
        """Build from ``(index [B], features [B,D], labels [B])`` triples; rows never given stay unfilled."""
        if not batches:
            raise ValueError(f"cannot cache {what}: the training split gave no batches")
        size = max(int(index.max()) for index, _, _ in batches) + 1
        ref = batches[0][1]
        feats = torch.zeros(size, ref.shape[1], dtype=ref.dtype, device=ref.device)
        labels = torch.full((size,), -1, dtype=torch.long, device=ref.device)
        filled = torch.zeros(size, dtype=torch.bool, device=ref.device)
        for index, f, y in batches:
            index = index.to(ref.device)
            feats[index] = f.to(ref.dtype)
            labels[index] = y.to(ref.device)
            filled[index] = True
        return cls(feats, labels, filled, what)

    def lookup(self, index: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        index = index.to(self.features.device)
        if int(index.max()) >= len(self) or int(index.min()) < 0 or not bool(self.filled[index].all()):
            missing = [int(i) for i in index if not 0 <= int(i) < len(self) or not bool(self.filled[i])]
            raise KeyError(f"{self.what}: nothing cached for row(s) {missing[:10]}; begin_stage's "
                           "train_batches() must cover the whole training split (on every rank)")
        if labels is not None and self.labels is not None:
            cached = self.labels[index]
            if not torch.equal(cached, labels.to(cached.device)):
                bad = (cached != labels.to(cached.device)).nonzero().flatten()[:5].tolist()
                raise ValueError(f"{self.what}: batch index/label mismatch with the cache at batch positions {bad} "
                                 f"(cached pids {cached[bad].tolist()}, batch pids {labels[bad].tolist()}); the "
                                 "training loader and begin_stage's train_batches() must index the same split")
        return self.features[index]

    def __len__(self) -> int:
        return int(self.features.shape[0])


# --------------------------------------------------------------------------
# backbone helpers

TEXT_SIDE = ("text", "text_projection", "token_embedding", "logit_scale")


def image_side_prefixes(backbone: nn.Module, root: str = "backbone") -> tuple[str, ...]:
    """Parameter-name prefixes (for ``Stage.trainable``) of everything in the
    backbone except the text side (``TEXT_SIDE``): the vision tower, its
    projection and any camera (SIE) embedding, wherever the backbone keeps it.
    Submodules get a trailing dot so ``backbone.text`` never matches
    ``backbone.text_projection``. A backbone that names its image side
    (``image_modules``, as every registered kind does) is taken at its word."""
    named = getattr(backbone, "image_modules", None)
    if named is not None:
        parts = [(name, getattr(backbone, name, None)) for name in named]
        return tuple(f"{root}.{name}." if isinstance(part, nn.Module) else f"{root}.{name}"
                     for name, part in parts if part is not None)
    out = []
    for name, _ in backbone.named_parameters():
        top, dot, _rest = name.partition(".")
        if top in TEXT_SIDE:
            continue
        prefix = f"{root}.{top}{dot}"
        if prefix not in out:
            out.append(prefix)
    if not out:
        raise ValueError("the backbone has no image-side parameters (everything is in "
                         f"{', '.join(TEXT_SIDE)})")
    return tuple(out)


def camera_ids(backbone: nn.Module, batch: dict, use_sie: bool) -> torch.Tensor | None:
    """The batch's camera ids when SIE is on and the backbone has a camera
    embedding (it has one only if built with ``num_cameras > 0``), else None."""
    if not use_sie or not getattr(backbone, "num_cameras", 0):
        return None
    return batch["camid"]


def encode_images(backbone: nn.Module, batch: dict, use_sie: bool, return_hidden: bool = False) -> Any:
    """``backbone.encode_image`` on ``batch["image"]`` with the camera ids SIE
    wants; ``return_hidden`` also returns per-layer states (for the penultimate
    CLS of the official triplet)."""
    camids = camera_ids(backbone, batch, use_sie)
    if return_hidden:
        return backbone.encode_image(batch["image"], camids, return_hidden=True)
    return backbone.encode_image(batch["image"], camids)


class ReidObjective(nn.Module):
    """The image-side ReID losses of CLIP-ReID's stage 2 (and the baseline):
    ``id`` = label-smoothed identity CE on every BNNeck's logits, summed, and
    ``triplet`` = batch-hard triplet on every pre-BN feature, summed (the official
    ``make_loss`` sums over its lists of scores and features). Unweighted: the
    weights travel in ``Stage.loss_weights``.

    The official ViT model's feature list is ``[penultimate-layer CLS, CLS,
    projected CLS]``; the first is used when the head output carries it
    (``ImageStageConfig.triplet_on_penultimate``).
    """

    def __init__(self, label_smoothing: float = 0.1, triplet_margin: float | None = 0.3,
                 triplet_normalize: bool = False) -> None:
        super().__init__()
        self.id_loss = CrossEntropyLabelSmooth(label_smoothing)
        self.triplet = TripletLoss(triplet_margin, triplet_normalize)

    def forward(self, out: HeadOutput, pids: torch.Tensor) -> dict[str, torch.Tensor]:
        id_loss = sum(self.id_loss(logits, pids) for logits in out.logits)
        triplet = self.triplet(out.cls, pids) + self.triplet(out.proj, pids)
        if out.penultimate is not None:
            triplet = triplet + self.triplet(out.penultimate, pids)
        return {"id": id_loss, "triplet": triplet}


@dataclass
class ImageStageConfig:
    """The image-encoder fine-tuning stage (CLIP-ReID's stage 2; the baseline's
    only stage). Defaults: the official ``configs/person/vit_clipreid.yml``."""

    epochs: int = 60
    lr: float = 5e-6
    warmup_epochs: int = 10
    warmup_factor: float = 0.1  # linear warmup from lr * warmup_factor
    milestones: tuple[int, ...] = (30, 50)
    gamma: float = 0.1
    weight_decay: float = 1e-4
    head_lr_mult: float = 1.0  # lr multiplier of the new BNNecks/classifiers (official: 1, LARGE_FC_LR False)
    label_smoothing: float = 0.1
    triplet_margin: float = 0.3
    triplet_soft_margin: bool = False  # official NO_MARGIN switch: soft-margin triplet instead of margin
    triplet_normalize: bool = False  # L2-normalise features before the triplet's euclidean distances
    triplet_on_penultimate: bool = True  # official ViT: triplet also on the penultimate layer's CLS token
    id_loss_weight: float = 0.25  # official ID_LOSS_WEIGHT (the ID loss is summed over both necks)
    triplet_loss_weight: float = 1.0

    def objective(self) -> ReidObjective:
        return ReidObjective(self.label_smoothing, None if self.triplet_soft_margin else self.triplet_margin,
                             self.triplet_normalize)

    def stage(self, name: str, trainable: tuple[str, ...], head_prefix: str,
              extra_loss_weights: tuple[tuple[str, float], ...] = ()) -> Stage:
        """The Stage: Adam, linear warmup then step decay; ``id``/``triplet`` weights
        plus ``extra_loss_weights`` for a method's own terms."""
        return Stage(name=name, epochs=self.epochs, lr=self.lr, trainable=trainable, optimizer="adam",
                     weight_decay=self.weight_decay, schedule="steps", warmup_epochs=self.warmup_epochs,
                     warmup_factor=self.warmup_factor, milestones=tuple(self.milestones), gamma=self.gamma,
                     param_groups=((head_prefix, self.head_lr_mult),) if self.head_lr_mult != 1.0 else (),
                     loss_weights=(("id", self.id_loss_weight), ("triplet", self.triplet_loss_weight),
                                   *extra_loss_weights))


@dataclass
class PromptStageConfig:
    """CLIP-ReID's stage 1 (prompt learning with frozen encoders). Defaults: the
    official config (Adam 3.5e-4, 120 epochs, 5 warmup epochs from 1e-5, cosine,
    weight decay 1e-4) and its ``SupConLoss`` (raw dot products, T = 1)."""

    epochs: int = 120
    lr: float = 3.5e-4
    warmup_epochs: int = 5
    warmup_lr: float = 1e-5
    weight_decay: float = 1e-4
    temperature: float = 1.0
    normalize: bool = False  # cosine similarity instead of the raw dot product in the i2t/t2i losses

    def stage(self, name: str, trainable: tuple[str, ...]) -> Stage:
        return Stage(name=name, epochs=self.epochs, lr=self.lr, trainable=trainable, optimizer="adam",
                     weight_decay=self.weight_decay, schedule="cosine", warmup_epochs=self.warmup_epochs,
                     warmup_factor=self.warmup_lr / self.lr)


# --------------------------------------------------------------------------
# config presets


class PresetConfig:
    """Mixin for method configs: the dataclass defaults are the paper's values;
    ``PRESETS`` maps other preset names to overrides of them."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    @classmethod
    def preset(cls, name: str) -> dict[str, Any]:
        """Overrides of the defaults for preset ``name`` (``paper``: none)."""
        if name == "paper":
            return copy.deepcopy(cls.PRESETS.get("paper", {}))
        if name not in cls.PRESETS:
            known = sorted({"paper", *cls.PRESETS})
            raise KeyError(f"{cls.__name__}: unknown preset {name!r}; known: {', '.join(known)}")
        return copy.deepcopy(cls.PRESETS[name])


__all__ = [
    "BNNeck",
    "CrossEntropyLabelSmooth",
    "DualNeckHead",
    "FeatureBank",
    "HeadOutput",
    "ImageStageConfig",
    "PresetConfig",
    "PromptStageConfig",
    "PromptLearner",
    "ReidObjective",
    "TripletLoss",
    "TEXT_SIDE",
    "camera_ids",
    "cosine_distance",
    "encode_images",
    "euclidean_dist",
    "hard_example_mining",
    "i2t_t2i_losses",
    "image_side_prefixes",
    "supcon_loss",
    "weights_init_classifier",
    "weights_init_kaiming",
]
