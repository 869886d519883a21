"""Metric-learning and identity losses of the CLIP-ReID family.

* ``TripletLoss`` / ``hard_example_mining``: TransReID and CLIP-ReID's
  ``loss/triplet_loss.py`` (batch-hard mining on euclidean distances, margin
  ranking or soft margin), generalised to batches whose identities have unequal
  image counts (fast-reid's masked mining).
* ``CrossEntropyLabelSmooth``: Szegedy et al.'s label smoothing exactly as in
  bag-of-tricks / CLIP-ReID (``(1-eps) * onehot + eps / K``).
* ``supcon_loss`` / ``i2t_t2i_losses``: CLIP-ReID's ``SupConLoss`` (stage 1).
* ``ReidObjective``: the image-side losses of CLIP-ReID's stage 2 on a
  ``DualNeckHead`` output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .distances import euclidean_dist
from .heads import HeadOutput


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


__all__ = [
    "CrossEntropyLabelSmooth",
    "ReidObjective",
    "TripletLoss",
    "hard_example_mining",
    "i2t_t2i_losses",
    "supcon_loss",
]
