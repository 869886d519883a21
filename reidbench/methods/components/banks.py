"""Feature caches computed once before a stage and looked up by row."""

from __future__ import annotations

import torch


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


__all__ = ["FeatureBank"]
