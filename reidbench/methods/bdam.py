"""BDAM with Mamba fusion and GradNorm ("Disentangling Identity from Clothing: A
Semantically-Supervised Decoupling Framework for Robust Person Re-Identification", ICME
submission, ``shared/papers/000``, Secs. III-IV): the text-to-image method.

Text-to-image ReID: a caption (query) retrieves gallery images. One stage trains the
backbone's image and text towers and every module below together.

**BDAM (Sec. III-C).** The image tower's patch tokens (not CLS: "we exploit the full
patch sequence") ``f_i [B,L,Wv]`` go through one linear projection with two branches
(``proj``: ``Linear(Wv, 2D)``, split into identity ``f'_id`` and clothing ``f'_clo``,
``D`` = ``bdam_dim``, default the tower's width as the paper's 768 for ViT-B). Each
branch refines its tokens with ``bdam_depth`` pre-LN self-attention layers; with
``cross_attention`` the branches then exchange information in both directions
(identity tokens attend to clothing tokens and vice versa, both from the same inputs:
one ``CrossAttentionBlock`` each way). GAP per branch gives ``f̂_id``, ``f̂_clo``; with
``gate`` a sigmoid gate ``g = σ(Linear([f̂_id; f̂_clo]))`` ``[B,D]`` gives
``f_id = g ⊙ f̂_id`` and ``f_clo = (1 - g) ⊙ f̂_clo`` (without it, the pooled features
pass as they are).

*Depth (the paper is silent).* Table II's "Shallow (3-layer)" row degrades the full
model, so the full model is deeper: ``bdam_depth`` defaults to 6 self-attention layers
per branch (half a ViT-B), and the ``shallow`` ablation sets 3.

**Losses (Sec. III-C, III-E).**

* ``aln`` (Eq. 1): ``s_ij = norm(W f̂_clo^i) · norm(f_clo^t j) / τ`` with the clothing
  descriptions through the text tower (pooled, projected), ``-mean_i log softmax_j s_ij``
  with the sample's own description as the one positive, as printed. Eq. 1 reads
  ``f̂_clo`` (the pooled, ungated feature): ``aln_feature="pooled"`` (default) follows
  it; ``"gated"`` reads ``f_clo``.
* ``decouple`` (Eq. 2): ``hsic(f_id, f_clo)`` of the gated features, linear kernels,
  centring matrix, ``1/(N-1)^2`` (``reidbench.methods.layers.hsic``).
* ``info`` (Eq. 3): the L2-normalised fused representation ``v_i`` against the caption
  embeddings ``t_j`` of the batch (the query side: captions through the text tower), at
  temperature τ. "The text feature for the i-th identity": every caption of the same
  identity in the P x K batch is a positive (the multi-positive InfoNCE of
  ``t2i_baseline``, which is Eq. 3 when each identity appears once). Eq. 3 is the
  image->text direction only (``info_directions="i2t"``, default); ``"both"`` adds
  text->image.
* ``triplet`` (Eq. 4): squared euclidean distances between identity features ``f_id``,
  margin ``m`` (``triplet_margin``), hardest positive and negative per anchor in the batch
  (the paper does not say how triplets are drawn; batch-hard is the field's default).

τ = ``temperature`` (0.02, IRRA's and ``t2i_baseline``'s; the paper gives none), shared by
Eqs. 1 and 3.

**GradNorm (Eqs. 5-6).** ``reidbench.methods.components.gradnorm.GradNorm`` over the
enabled losses among ``info``, ``triplet``, ``aln``, ``decouple``: learnable
``w_k = exp(s_k)``; the main loss is ``Σ w_k.detach() L_k`` (returned per task, so the
task weights never get its gradient), the term ``gradnorm`` (Eq. 5's balancing plus
``λ Σ (log w_k)^2``) trains only ``s_k``; ``L_k^0`` is the first step's loss, all-reduced
across ranks. *Shared layer*: ``bdam.proj.weight``, the two-branch projection, the last
layer every loss's gradient passes through (the identity losses reach it through the
identity half, ``aln`` through the clothing half, ``decouple`` and the cross-attention
through both); in the no-BDAM rows it is the single identity projection. α's role is a
switch (``gradnorm_alpha_role``): ``"exponent"`` (default) makes Sec. IV-A's α = 1.5 what
it is in GradNorm (Chen et al. 2018, whose published default is 1.5), the restoring-force
exponent on the loss ratios; ``"weight"`` reads Eq. 6 as printed, α multiplying
``L_GradNorm``. λ (``gradnorm_lambda``, 0.1) is not given; Table IV's "w/o Gate Reg." row is
λ = 0, the only regulariser the paper defines. The task weights train at
``gradnorm_lr_mult`` (100) times the lr without weight decay: at lr 1e-4 they would
otherwise barely move in a run. ``gradnorm=False`` sums the losses with weight 1.
``new_module_lr_mult`` (1, the paper's single lr) multiplies the lr of every module outside
the backbone (BDAM, the fusion, the clothing projection): IRRA and CLIP-ReID train their
randomly initialised heads faster than the pretrained towers.

**Mamba fusion (Sec. III-D).** An FFN aligns the visual identity features and the
identity description's text features to ``fusion_dim`` (256 in the paper), a softmax
gate over ``[f_img; f_txt]`` gives ``W_img + W_txt = 1``, a ``MambaStack`` of
``mamba_layers`` residual Mamba layers (state 16, conv 4, dropout 0.1) runs over the
weighted features, and a linear projection gives ``f_final`` in the joint space
(``D_out`` = the backbone's ``embed_dim``, where the caption queries live). The clothing
feature is discarded. What Mamba's sequence axis is, the paper does not say:

* ``fusion_sequence="tokens"`` (default): Mamba reads real token sequences, the
  identity-branch image tokens (gated per channel by ``g``, so their mean is ``f_id``),
  aligned by the image FFN and weighted by ``W_img``, followed by the identity
  description's text tokens (the text tower's last-layer states of the real tokens),
  aligned by the text FFN and weighted by ``W_txt``; the output is the mean over the
  real positions (padding is zeroed, comes last and, Mamba being causal, never reaches a
  real position). The gate reads the masked means of the aligned sequences. Mamba's
  linear cost in sequence length then means something (``L`` patches + ``T`` words).
* ``fusion_sequence="global"``: the printed formula, ``f_fusion = W_img f_img +
  W_txt f_txt`` of the pooled vectors (``f_id`` and the description's pooled text
  embedding), a sequence of length one.

Table III switches: ``mamba=False`` ("w/o Mamba": the weighted sequence is pooled and
projected directly), ``fusion_gate=False`` ("w/o Gate": ``W_img = W_txt = 1/2``),
``fusion_align=False`` ("w/o Alignment": one linear map per modality instead of the
FFN, the dimensions still have to match). ``fusion=False`` drops the module (Table II's
rows): ``f_final = Linear(f_id)``. ``bdam=False`` drops BDAM (Table III's rows and the
baselines): one linear projection and GAP give ``f_id``; there is then no clothing
feature, so ``aln`` and ``decouple`` are off.

**Retrieval.** Queries: captions through the text tower (``embed_text``, the pooled
projected embedding, the same ``t`` as in Eq. 3). Gallery (``embed_image``):
``gallery_texts="id_description"`` (default, the paper's Fig. 2: the fusion module
always fuses an image with its identity description) fuses each gallery image with its
own identity description, generated offline for every image (the harness hands them to
evaluation batches because ``eval_text_kinds`` names them; evaluation never reads the
clothing descriptions or captions of gallery images). ``gallery_texts="none"``:
image-only, a different model rather than a test-time switch: the fusion sees the image
tokens alone (``W_img = 1``) in training as at test time, and identity descriptions are
not read at all. On the synthetic sets the generator's descriptions are exact
functions of identity, so the ``id_description`` numbers are an upper bound of what an
MLLM's descriptions would give; report both.

**Training** (Sec. IV-A): Adam, lr 1e-4, weight decay 1e-3 (none on the GradNorm
log-weights), cosine annealing, dropout 0.1 everywhere; 60 epochs (not stated; IRRA's
schedule, as ``t2i_baseline``). The backbone's temperature parameter is never trained.

**Logged per epoch** (``LOGGED``, means over the epoch's steps): ``w_<k>`` (every task
weight), ``raw_<k>`` (every unweighted L_k), ``gate_id`` (mean of ``g``),
``gate_clo`` (mean of ``1 - g``), ``fusion_w_img``, ``fusion_w_txt``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .base import LOGGED, DataSpec, Method, Stage, register_method
from .components import PresetConfig, encode_images, image_side_prefixes
from .components.gradnorm import GradNorm
from .layers import CrossAttentionBlock, Mlp, hsic
from .layers.mamba import MambaStack
from .t2i_baseline import cross_modal_contrastive

TRAIN_STAGE = "train"
TASKS = ("info", "triplet", "aln", "decouple")  # GradNorm's task order


@dataclass
class BDAMConfig(PresetConfig):
    """Defaults: the paper (module docstring); ``tiny``: see ``PRESETS``."""

    # BDAM (Sec. III-C; Table II)
    bdam: bool = True
    bdam_dim: int | None = None  # D; None: the image tower's width
    bdam_depth: int = 6  # self-attention layers per branch (Table II "Shallow": 3)
    bdam_heads: int = 8
    cross_attention: bool = True
    gate: bool = True
    # losses (Eqs. 1-4; Table IV)
    info: bool = True
    triplet: bool = True
    aln: bool = True
    decouple: bool = True
    temperature: float = 0.02
    triplet_margin: float = 0.3
    info_directions: Literal["i2t", "both"] = "i2t"
    aln_feature: Literal["pooled", "gated"] = "pooled"
    # GradNorm (Eqs. 5-6)
    gradnorm: bool = True
    gradnorm_alpha: float = 1.5
    gradnorm_alpha_role: Literal["exponent", "weight"] = "exponent"
    gradnorm_lambda: float = 0.1  # λ of Σ (log w_k)^2 (not given); Table IV "w/o Gate Reg.": 0
    gradnorm_lr_mult: float = 100.0  # the task weights' lr multiplier (not given)
    new_module_lr_mult: float = 1.0  # lr multiplier of the modules outside the backbone (Sec. IV-A: 1)
    # Mamba fusion (Sec. III-D; Table III)
    fusion: bool = True
    fusion_dim: int = 256
    fusion_sequence: Literal["tokens", "global"] = "tokens"
    fusion_gate: bool = True
    fusion_align: bool = True
    mamba: bool = True
    mamba_layers: int = 2
    mamba_d_state: int = 16
    mamba_d_conv: int = 4
    # retrieval
    gallery_texts: Literal["id_description", "none"] = "id_description"
    # training (Sec. IV-A)
    dropout: float = 0.1
    sie: bool = True
    epochs: int = 60
    lr: float = 1e-4
    weight_decay: float = 1e-3
    warmup_epochs: int = 0
    warmup_factor: float = 0.1

    # tiny: the CPU benchmark, with t2i_baseline's tiny schedule (12 epochs, lr 1e-4, 2 warm-up
    # epochs) so the two compare at equal training; BDAM at half the tiny tower's width (96 of
    # 192: its 12 self-attention layers would otherwise cost three image towers) and a 64-d
    # fusion for the 128-d joint space.
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"epochs": 12, "warmup_epochs": 2, "bdam_dim": 96, "bdam_heads": 4, "fusion_dim": 64},
    }

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"bdam: temperature must be > 0, got {self.temperature}")
        if self.bdam_depth < 0:
            raise ValueError(f"bdam: bdam_depth must be >= 0, got {self.bdam_depth}")
        if self.mamba_layers < 1:
            raise ValueError(f"bdam: mamba_layers must be >= 1 (mamba=false removes Mamba), got {self.mamba_layers}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"bdam: dropout must be in [0, 1), got {self.dropout}")
        if self.new_module_lr_mult <= 0:
            raise ValueError(f"bdam: new_module_lr_mult must be > 0, got {self.new_module_lr_mult}")
        if self.gradnorm_lambda < 0 or self.gradnorm_alpha < 0:
            raise ValueError(f"bdam: gradnorm_alpha and gradnorm_lambda must be >= 0, got "
                             f"{self.gradnorm_alpha} and {self.gradnorm_lambda}")
        if not self.info and not self.fusion and not self.triplet:
            raise ValueError("bdam: with info=false, triplet=false and fusion=false nothing trains the image "
                             "embedding; keep one of them")
        if not (self.info or self.triplet or (self.bdam and (self.aln or self.decouple))):
            raise ValueError("bdam: every loss is off (info, triplet, and aln/decouple need bdam=true)")

    def tasks(self) -> tuple[str, ...]:
        """The enabled losses, in GradNorm's order (``aln``/``decouple`` need the clothing branch)."""
        on = {"info": self.info, "triplet": self.triplet, "aln": self.aln and self.bdam,
              "decouple": self.decouple and self.bdam}
        return tuple(k for k in TASKS if on[k])


def squared_triplet(features: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Eq. 4 with batch-hard mining: ``mean_a max(||f_a - f_p||^2 - ||f_a - f_n||^2 + m, 0)``,
    ``p`` the farthest same-label sample, ``n`` the nearest other-label one; anchors
    without a positive other than themselves or without a negative are skipped (a batch
    with none left gives a zero that stays on the graph)."""
    f = features.float()
    dist = torch.cdist(f, f).pow(2)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pos, neg = same & ~eye, ~same
    valid = pos.any(1) & neg.any(1)
    if not bool(valid.any()):
        return features.sum() * 0.0
    d_ap = dist.masked_fill(~pos, float("-inf")).max(1).values
    d_an = dist.masked_fill(~neg, float("inf")).min(1).values
    return F.relu(d_ap - d_an + margin)[valid].mean()


def alignment_loss(clothes: torch.Tensor, text: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eq. 1: ``-mean_i log(exp(s_ii/τ) / Σ_j exp(s_ij/τ))``, ``s_ij`` the dot product of the
    L2-normalised projected clothing feature ``i`` and clothing description ``j``."""
    logits = F.normalize(clothes.float(), dim=-1) @ F.normalize(text.float(), dim=-1).T / temperature
    return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x [B,L,D]`` over the positions where ``mask [B,L]`` is true."""
    m = mask.to(x.dtype)[..., None]
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


class BDAM(nn.Module):
    """Sec. III-C: two-branch projection, per-branch self-attention, cross-attention, GAP, gate.

    ``forward(tokens [B,L,Wv])`` returns a dict: ``id_tokens`` ``[B,L,D]`` (after the
    attention, before the gate), ``f_hat_id``, ``f_hat_clo``, ``f_id``, ``f_clo`` ``[B,D]``
    and ``g`` ``[B,D]`` (ones without the gate). With ``clothing=False`` (the no-BDAM
    rows) the projection has one branch and no attention: ``f_id`` = GAP of it."""

    def __init__(self, in_dim: int, dim: int, depth: int, heads: int, cross_attention: bool, gate: bool,
                 dropout: float, clothing: bool = True) -> None:
        super().__init__()
        if clothing and dim % heads:
            raise ValueError(f"bdam: bdam_dim={dim} must be a multiple of bdam_heads={heads}")
        self.dim, self.clothing = dim, clothing
        self.proj = nn.Linear(in_dim, 2 * dim if clothing else dim)  # the GradNorm shared layer
        if not clothing:
            return

        def layers() -> nn.ModuleList:
            return nn.ModuleList(nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout, activation="gelu",
                                                            batch_first=True, norm_first=True) for _ in range(depth))

        self.id_layers, self.clo_layers = layers(), layers()
        self.id_norm, self.clo_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.id_from_clo = CrossAttentionBlock(dim, heads, dropout=dropout) if cross_attention else None
        self.clo_from_id = CrossAttentionBlock(dim, heads, dropout=dropout) if cross_attention else None
        self.gate = nn.Linear(2 * dim, dim) if gate else None

    def forward(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.proj(tokens)
        if not self.clothing:
            f = x.mean(1)
            return {"id_tokens": x, "f_hat_id": f, "f_id": f, "g": torch.ones_like(f)}
        ident, clo = x.split(self.dim, dim=-1)
        for layer in self.id_layers:
            ident = layer(ident)
        for layer in self.clo_layers:
            clo = layer(clo)
        ident, clo = self.id_norm(ident), self.clo_norm(clo)
        if self.id_from_clo is not None:  # both directions from the same inputs ("bidirectional")
            ident, clo = self.id_from_clo(ident, clo), self.clo_from_id(clo, ident)
        f_hat_id, f_hat_clo = ident.mean(1), clo.mean(1)
        if self.gate is not None:
            g = torch.sigmoid(self.gate(torch.cat([f_hat_id, f_hat_clo], dim=-1)))
        else:
            g = torch.ones_like(f_hat_id)
        f_id = g * f_hat_id
        f_clo = (1 - g) * f_hat_clo if self.gate is not None else f_hat_clo
        return {"id_tokens": ident, "f_hat_id": f_hat_id, "f_hat_clo": f_hat_clo, "f_id": f_id, "f_clo": f_clo,
                "g": g}


class MambaFusion(nn.Module):
    """Sec. III-D (module docstring): FFN alignment, softmax fusion gate, residual Mamba
    stack, projection to ``out_dim``. ``forward(image, text, text_mask)`` with
    ``image [B,L,Di]`` (or ``[B,Di]`` in the ``global`` reading), ``text [B,T,Dt]`` /
    ``[B,Dt]`` or None (image only) and ``text_mask [B,T]`` bool (True = real token);
    returns ``(f_final [B,out_dim], weights [B,2])``."""

    def __init__(self, image_dim: int, text_dim: int, dim: int, out_dim: int, cfg: BDAMConfig) -> None:
        super().__init__()

        def align(in_dim: int) -> nn.Module:
            return Mlp(in_dim, 4 * dim, dim, dropout=cfg.dropout) if cfg.fusion_align else nn.Linear(in_dim, dim)

        self.align_img = align(image_dim)
        self.align_txt = align(text_dim) if cfg.gallery_texts != "none" else None
        self.gate = nn.Linear(2 * dim, 2) if cfg.fusion_gate and self.align_txt is not None else None
        self.mamba = MambaStack(dim, n_layers=cfg.mamba_layers, d_state=cfg.mamba_d_state, d_conv=cfg.mamba_d_conv,
                                dropout=cfg.dropout) if cfg.mamba else None
        self.out = nn.Linear(dim, out_dim)

    def forward(self, image: torch.Tensor, text: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = image.dim() == 3
        f_img_seq = self.align_img(image if tokens else image[:, None])
        img_mask = torch.ones(f_img_seq.shape[:2], dtype=torch.bool, device=image.device)
        if self.align_txt is None or text is None:
            if self.align_txt is not None:
                raise ValueError("bdam: the fusion fuses identity descriptions (gallery_texts='id_description') "
                                 "but got none")
            weights = torch.stack([torch.ones_like(f_img_seq[:, 0, 0]), torch.zeros_like(f_img_seq[:, 0, 0])], 1)
            seq, mask = f_img_seq, img_mask
        else:
            f_txt_seq = self.align_txt(text if tokens else text[:, None])
            if text_mask is None or not tokens:
                text_mask = torch.ones(f_txt_seq.shape[:2], dtype=torch.bool, device=image.device)
            f_img, f_txt = _masked_mean(f_img_seq, img_mask), _masked_mean(f_txt_seq, text_mask)
            if self.gate is not None:
                weights = torch.softmax(self.gate(torch.cat([f_img, f_txt], dim=-1)).float(), dim=-1).to(f_img.dtype)
            else:
                weights = torch.full((len(f_img), 2), 0.5, dtype=f_img.dtype, device=f_img.device)
            w_img, w_txt = weights[:, 0, None, None], weights[:, 1, None, None]
            if tokens:
                seq = torch.cat([w_img * f_img_seq, w_txt * f_txt_seq * text_mask[..., None]], dim=1)
                mask = torch.cat([img_mask, text_mask], dim=1)
            else:  # the printed formula: a weighted sum, one position
                seq, mask = w_img * f_img_seq + w_txt * f_txt_seq, img_mask
        if self.mamba is not None:
            seq = self.mamba(seq)
        return self.out(_masked_mean(seq, mask)), weights


@register_method
class BDAMethod(Method):
    """BDAM + Mamba fusion + GradNorm for text-to-image ReID (module docstring)."""

    name = "bdam"
    config_cls = BDAMConfig
    tasks = ("text",)
    requires = ("caption", "id_description", "clothes_description")
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"paper": BDAMConfig.preset("paper"),
                                                    "tiny": BDAMConfig.preset("tiny")}

    def __init__(self, config: BDAMConfig, backbone: nn.Module, spec: DataSpec) -> None:
        super().__init__(config, backbone, spec)
        cfg = config
        width = backbone.vision_width
        dim = cfg.bdam_dim or width
        self.bdam = BDAM(width, dim, cfg.bdam_depth, cfg.bdam_heads, cfg.cross_attention, cfg.gate, cfg.dropout,
                         clothing=cfg.bdam)
        self.clo_to_text = nn.Linear(dim, backbone.embed_dim) if "aln" in cfg.tasks() else None
        if cfg.fusion:
            text_dim = backbone.text_width if cfg.fusion_sequence == "tokens" else backbone.embed_dim
            self.fusion = MambaFusion(dim, text_dim, cfg.fusion_dim, backbone.embed_dim, cfg)
            self.out = None
        else:
            self.fusion = None
            self.out = nn.Linear(dim, backbone.embed_dim)
        self.task_names = cfg.tasks()
        self.gradnorm = GradNorm(self.task_names, alpha=cfg.gradnorm_alpha, alpha_role=cfg.gradnorm_alpha_role,
                                 reg_lambda=cfg.gradnorm_lambda) if cfg.gradnorm and len(self.task_names) > 1 else None

    # ------------------------------------------------------------------ contract

    def eval_text_kinds(self) -> tuple[str, ...]:
        """Gallery images are fused with their own identity descriptions (module docstring)."""
        return ("id_description",) if self._reads_descriptions() else ()

    def _reads_descriptions(self) -> bool:
        return self.fusion is not None and self.config.gallery_texts == "id_description"

    def stages(self) -> list[Stage]:
        cfg = self.config
        tasks = set(self.task_names)
        # The method reads the patch tokens, never the projected CLS: the image projection stays frozen.
        every_image_part = image_side_prefixes(self.backbone)
        image_side = tuple(p for p in every_image_part if p.rstrip(".") != "backbone.visual_projection")
        # The text tower learns from the captions (info), the clothing descriptions (aln)
        # and the identity descriptions (fused, so through info); the temperature is fixed.
        text_trains = "info" in tasks or "aln" in tasks
        text_side = []
        if text_trains:
            for name, _ in self.backbone.named_parameters():
                top, dot, _rest = name.partition(".")
                prefix = f"backbone.{top}{dot}"
                if top != "logit_scale" and not any(prefix.startswith(p) or p.startswith(prefix) for p in every_image_part) \
                        and prefix not in text_side:
                    text_side.append(prefix)
        own = ["bdam."]
        if self.clo_to_text is not None:
            own.append("clo_to_text.")
        if "info" in tasks:  # the fused embedding is trained by L_info alone
            own.append("fusion." if self.fusion is not None else "out.")
        if self.gradnorm is not None:
            own.append("gradnorm.")
        groups: list[tuple] = [("gradnorm.", cfg.gradnorm_lr_mult, 0.0)] if self.gradnorm is not None else []
        if cfg.new_module_lr_mult != 1.0:
            groups += [(p, cfg.new_module_lr_mult) for p in own if p != "gradnorm."]
        return [Stage(name=TRAIN_STAGE, epochs=cfg.epochs, lr=cfg.lr, trainable=(*image_side, *text_side, *own),
                      optimizer="adam", weight_decay=cfg.weight_decay, schedule="cosine",
                      warmup_epochs=cfg.warmup_epochs, warmup_factor=cfg.warmup_factor, param_groups=tuple(groups))]

    # ------------------------------------------------------------------ parts

    def _device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def _tokens(self, texts: list[str], what: str) -> tuple[torch.Tensor, torch.Tensor]:
        if texts is None:
            raise ValueError(f"bdam: the batch has no {what!r} texts; the loader yields them for methods that "
                             f"require them (training) or name them in eval_text_kinds (evaluation)")
        tok = self.backbone.tokenizer(list(texts))
        device = self._device()
        return tok["input_ids"].to(device), tok["attention_mask"].to(device)

    def encode_pooled(self, texts: list[str], what: str) -> torch.Tensor:
        """``[B, embed_dim]``: the text tower's pooled, projected embedding."""
        return self.backbone.encode_text(*self._tokens(texts, what))

    def _fuse(self, parts: dict[str, torch.Tensor], batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(f_final [B, embed_dim], fusion weights [B,2] or None)``."""
        if self.fusion is None:
            return self.out(parts["f_id"]), None
        tokens = self.config.fusion_sequence == "tokens"
        image = parts["g"][:, None, :] * parts["id_tokens"] if tokens else parts["f_id"]
        if not self._reads_descriptions():
            return self.fusion(image)
        ids, mask = self._tokens(batch.get("id_description"), "id_description")
        if tokens:
            text = self.backbone.encode_text_tokens(ids, mask)
            # Padding sits after each description's last token; cut the columns no row uses
            # (CLIP pads every text to 77), so Mamba scans only what some description fills.
            length = int(text.attention_mask.sum(1).max())
            return self.fusion(image, text.tokens[:, :length], text.attention_mask[:, :length].bool())
        return self.fusion(image, self.backbone.encode_text(ids, mask))

    def forward_image(self, batch: dict, fuse: bool = True
                      ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, torch.Tensor | None]:
        """``(BDAM outputs, f_final or None, fusion weights or None)``."""
        features = encode_images(self.backbone, batch, self.config.sie)
        parts = self.bdam(features.tokens[:, 1:])  # the patch tokens (index 0 is CLS)
        if not fuse:
            return parts, None, None
        final, weights = self._fuse(parts, batch)
        return parts, final, weights

    # ------------------------------------------------------------------ training

    def training_step(self, batch: dict, stage: Stage) -> dict[str, torch.Tensor]:
        if stage.name != TRAIN_STAGE:
            raise ValueError(f"bdam has one stage {TRAIN_STAGE!r}, got {stage.name!r}")
        cfg = self.config
        pids = batch["pid"]
        parts, final, weights = self.forward_image(batch, fuse=cfg.info)  # only L_info reads f_final
        losses: dict[str, torch.Tensor] = {}
        if cfg.info:
            captions = self.encode_pooled(batch.get("caption"), "caption")
            both = cross_modal_contrastive(final, captions, pids, 1.0 / cfg.temperature)
            losses["info"] = both["i2t"] if cfg.info_directions == "i2t" else both["i2t"] + both["t2i"]
        if cfg.triplet:
            losses["triplet"] = squared_triplet(parts["f_id"], pids, cfg.triplet_margin)
        if "aln" in self.task_names:
            clothes = parts["f_hat_clo"] if cfg.aln_feature == "pooled" else parts["f_clo"]
            text = self.encode_pooled(batch.get("clothes_description"), "clothes_description")
            losses["aln"] = alignment_loss(self.clo_to_text(clothes), text, cfg.temperature)
        if "decouple" in self.task_names:
            losses["decouple"] = hsic(parts["f_id"], parts["f_clo"])
        losses = {k: losses[k] for k in self.task_names}

        logged: dict[str, torch.Tensor] = {f"raw_{k}": v.detach().float() for k, v in losses.items()}
        if self.bdam.clothing and cfg.gate:
            g = parts["g"].detach()
            logged.update(gate_id=g.mean(), gate_clo=(1 - g).mean())
        if weights is not None:
            logged.update(fusion_w_img=weights[:, 0].detach().mean(), fusion_w_txt=weights[:, 1].detach().mean())
        if self.gradnorm is None:
            terms = dict(losses)
        else:
            balanced = self.gradnorm(losses, shared=self.bdam.proj.weight)
            # Per task w_k.detach() * L_k (they sum to GradNorm's ``weighted``), so each is logged.
            terms = {k: balanced.weights[k] * losses[k] for k in self.task_names}
            terms["gradnorm"] = balanced.gradnorm  # trains only the task weights
            logged.update(balanced.logged)
        terms[LOGGED] = logged
        return terms

    # ------------------------------------------------------------------ inference

    def embed_image(self, batch: dict) -> torch.Tensor:
        """``[B, embed_dim]``: ``f_final`` (fused with the image's own identity description
        unless ``gallery_texts='none'``)."""
        return self.forward_image(batch)[1]

    def embed_text(self, batch: dict) -> torch.Tensor:
        """``[B, embed_dim]``: the captions through the text tower (pooled, projected)."""
        return self.encode_pooled(batch.get("caption"), "caption")


__all__ = ["BDAM", "TASKS", "BDAMConfig", "BDAMethod", "MambaFusion", "alignment_loss", "squared_triplet"]
