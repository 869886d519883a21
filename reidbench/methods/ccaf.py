"""CCAF ("CLIP-Driven Cloth-Agnostic Feature Learning for Cloth-Changing Person
Re-Identification", MM'24, ``shared/papers/001``): identity prompts learned from shielding
images, a second (shielding) image encoder aligned with the raw one, and an
adversarial clothes projection that the raw encoder learns to defeat.

Images (Eqs. 4, 11). From the LIP-format parsing map (``batch["parsing"]``, 20
classes), ``CLOTHES_CLASSES`` marks the clothes pixels. The *shielding* image
x^s sets them to white (255) and keeps the rest; the *clothes* image x^c sets
every other pixel to white and keeps the clothes. Images arrive normalised, so
"255" is written as its normalised value ``(1 - mean_c) / std_c`` per channel,
from the backbone's ``image_mean``/``image_std`` (a backbone without them, such
as the test fake, is taken as un-normalised: mean 0, std 1, fill 1.0). A sample
whose parsing map is all background (a dataset without maps) has no clothes:
its shielding image is the raw image and its clothes image is all white.

Stage 1 ``prompt`` (GCATP + GCTP, Eq. 16): two ``PromptLearner``s, "a photo of
a X..X person." per identity and "a photo of a X..X clothes." per clothes id;
both encoders frozen; the frozen E_v's projected features of every training
image's shielding and clothes versions are cached in ``begin_stage`` (as
CLIP-ReID caches its raw ones); ``i2t``/``t2i`` on (shielding feature, identity
prompt) and ``i2t_clothes``/``t2i_clothes`` on (clothes feature, clothes prompt),
CLIP-ReID's supervised contrastive losses.

Stage 2 ``image`` (Eq. 17), every term returned unweighted by name, the weights
in ``Stage.loss_weights``:

* raw stream E_v (the backbone's image side) + ``head``: ``id``, ``triplet``
  (L_id) and ``i2tce`` against the frozen identity prompts;
* shielding stream E_v^s = ``copy.deepcopy(backbone.image_tower())`` (the same
  pretrained weights, trained on its own) + ``shield_head`` on x^s:
  ``id_shield``, ``triplet_shield`` (L^s_id) and ``i2tce_shield`` (L^s_i2tce);
* ``con`` (λ1, Eq. 10): mean over the batch's identities of the squared
  euclidean distance between the identity's centre of raw features and of
  shielding features (projected features, the space the prompts live in);
  both streams receive its gradient (the paper's "mutual learning");
* CFM: ``proj_c`` (C x C, no bias, C = the projection width) gives f^c = f P.
  ``i2tce_clothes`` (L^c_i2tce, Eq. 14) is computed on ``proj_c(f.detach())``
  against the frozen clothes prompts, so it trains ``proj_c`` and nothing else;
  ``dis`` (λ2, Eq. 15) is ``cos(f, f P)`` with P taken *detached*
  (``proj_c(f, train_weight=False)``), so it trains E_v (through both
  arguments) and never ``proj_c``. The paper alternates the two updates; with
  this gradient routing one step applies both, each to its own parameters,
  which is the alternation with both half-steps taken from the same weights
  (``tests/test_ccaf.py`` checks which parameters each term reaches).

Eq. 15's sign. As printed, L_dis = -mean cos(f, f^c), so minimising it makes the
features *similar*, while the text says E_v must make f "dissimilar" to f^c.
The default ``dis_sign="dissimilar"`` follows the text (L_dis = +mean cos);
``"as_printed"`` is the printed formula.

Inference: E_v alone (the paper), ``concat(cls, proj)`` before the BNNecks like
CLIP-ReID, cosine distance: parameters and FLOPs equal CLIP-ReID's.

Decisions where the paper is silent: the similarity s(.,.) and the i2tce forms
are CLIP-ReID's (raw dot product, T = 1; ``i2t_logits``); i2tce terms use the
label-smoothed CE of the ID loss; L_id's weights are CLIP-ReID's official ones
(ID 0.25 on the sum over both necks, triplet 1) for both streams, where Eq. 17
writes unit weights; ``proj_c`` starts as PyTorch's default linear init (an
identity init would make cos(f, f P) constant in f, so L_dis would have no
gradient); stage 2 uses Adam with a cosine decay (the paper) after CLIP-ReID's
10-epoch linear warmup.

Ablations (Tables 3, 4): ``use_i2t`` (L_i2tce), ``use_i2i`` (shielding stream +
L_con), ``use_shield_i2t`` (L^s_i2tce), ``use_cfm`` (L^c_i2tce + L_dis),
``cfm_supervision="onehot"`` (L^c_i2tce replaced by a linear clothes
classifier's CE, "r/p L^c_i2tce"). Stage 1 trains only the prompts some stage-2
term reads, and is skipped when none does.

Departures (as clip_reid's): stage 1 draws its batches from the harness's P x K
sampler rather than random batches of 64; the shielding image is built from the
augmented image and its equally augmented parsing map, so random erasing can leave
noise on non-clothes pixels of x^s (the paper does not say in which order it masks
and augments).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..datasets.transforms import CLIP_REID_MEAN, CLIP_REID_STD
from .base import DataSpec, Method, Stage, register_method
from .components import (
    TINY_IMAGE_STAGE,
    DualNeckHead,
    FeatureBank,
    ImageStageConfig,
    PresetConfig,
    PromptLearner,
    PromptStageConfig,
    encode_images,
    evaluating,
    i2t_t2i_losses,
    image_side_prefixes,
)

PROMPT_STAGE = "prompt"
IMAGE_STAGE = "image"

# LIP's 20 classes: 0 background, 1 hat, 2 hair, 3 glove, 4 sunglasses, 5 upper-clothes,
# 6 dress, 7 coat, 8 socks, 9 pants, 10 jumpsuits, 11 scarf, 12 skirt, 13 face,
# 14 left-arm, 15 right-arm, 16 left-leg, 17 right-leg, 18 left-shoe, 19 right-shoe.
# Clothes = every garment the paper names (upper clothes, dress, coat, pants, skirt) and
# the other worn garments that change with an outfit (hat, glove, socks, jumpsuits,
# scarf, shoes); hair, face, skin and sunglasses stay (identity cues or too small to matter).
CLOTHES_CLASSES: tuple[int, ...] = (1, 3, 5, 6, 7, 8, 9, 10, 11, 12, 18, 19)
LIP_NUM_CLASSES = 20
WHITE = 1.0  # pixel value 255 after ToTensor's /255


@dataclass
class CcafConfig(PresetConfig):
    """Hyperparameters and ablation switches; defaults are the paper's values."""

    n_ctx: int = 4  # M learnable tokens per identity / clothes id
    id_template: str = "a photo of a {ctx} person."
    clothes_template: str = "a photo of a {ctx} clothes."
    ctx_init_std: float = 0.02
    clothes_classes: tuple[int, ...] = CLOTHES_CLASSES
    use_i2t: bool = True  # L_i2tce on the raw stream (Table 3 "I2T")
    use_i2i: bool = True  # shielding stream + L_con (Table 3 "I2I")
    use_shield_i2t: bool = True  # L^s_i2tce (Table 4)
    use_cfm: bool = True  # L^c_i2tce + L_dis (Table 3 "CFM")
    cfm_supervision: Literal["prompts", "onehot"] = "prompts"  # Table 4 "r/p L^c_i2tce"
    lambda_con: float = 0.1  # λ1
    lambda_dis: float = 1.0  # λ2
    dis_sign: Literal["dissimilar", "as_printed"] = "dissimilar"  # Eq. 15: +cos (text) or -cos (printed)
    i2t_logits: Literal["raw", "cosine"] = "raw"
    sie: bool = True
    neck_feat: Literal["before", "after"] = "before"
    image_schedule: Literal["cosine", "steps"] = "cosine"
    prompt: PromptStageConfig = field(default_factory=PromptStageConfig)
    image: ImageStageConfig = field(default_factory=ImageStageConfig)  # the paper preset sets 40 epochs

    # tiny: clip_reid's tiny preset (same prompt and image stages, step schedule) so the
    # two rows on synthetic_cc differ by CCAF's terms only; see clip_reid.py for why.
    # paper: stage 2 runs 40 epochs at 5e-6 (ImageStageConfig's default lr); nested
    # overrides replace ImageStageConfig's defaults, so the 40 lives here, not in a factory.
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {"image": {"epochs": 40}},
        "tiny": {
            "i2t_logits": "cosine",
            "image_schedule": "steps",
            "prompt": {"epochs": 10, "lr": 3.5e-3, "warmup_epochs": 1, "warmup_lr": 3.5e-4},
            "image": TINY_IMAGE_STAGE,
        },
    }


def fill_values(backbone: nn.Module) -> torch.Tensor:
    """The normalised value of a white (255) pixel per channel, ``[3]``."""
    mean = torch.tensor(getattr(backbone, "image_mean", (0.0, 0.0, 0.0)), dtype=torch.float32)
    std = torch.tensor(getattr(backbone, "image_std", (1.0, 1.0, 1.0)), dtype=torch.float32)
    return (WHITE - mean) / std


def clothes_mask(parsing: torch.Tensor, classes: tuple[int, ...]) -> torch.Tensor:
    """``[B,1,H,W]`` bool: pixels whose LIP label is one of ``classes``."""
    table = torch.zeros(LIP_NUM_CLASSES, dtype=torch.bool, device=parsing.device)
    table[list(classes)] = True
    return table[parsing.clamp(0, LIP_NUM_CLASSES - 1)].unsqueeze(1)


def shielding_and_clothes_images(image: torch.Tensor, parsing: torch.Tensor, fill: torch.Tensor,
                                 classes: tuple[int, ...] = CLOTHES_CLASSES) -> tuple[torch.Tensor, torch.Tensor]:
    """Eqs. 4 and 11 on normalised images: ``(x^s, x^c)``, the clothes pixels
    resp. the non-clothes pixels set to ``fill`` (``[3]``, white after normalisation)."""
    if parsing.shape[-2:] != image.shape[-2:]:
        raise ValueError(f"ccaf: parsing map {tuple(parsing.shape)} does not match images {tuple(image.shape)}")
    m = clothes_mask(parsing, classes)
    white = fill.to(image.device, image.dtype).view(1, -1, 1, 1).expand_as(image)
    return torch.where(m, white, image), torch.where(m, image, white)


@register_method
class Ccaf(Method):
    """CCAF's two-stage training (see the module docstring)."""

    name = "ccaf"
    config_cls = CcafConfig
    tasks = ("image",)
    requires = ("parsing", "clothes_id")
    # CCAF is built on CLIP-ReID's pipeline (same augmentations, Sec. 4.2) and prints no
    # normalisation: CLIP-ReID's released mean = std = 0.5, as clip_reid, so ccaf - clip_reid
    # measures the method, not the pixels. Padding-crop always, as CLIP-ReID's code.
    DATA_RECIPE = {"pixel_mean": CLIP_REID_MEAN, "pixel_std": CLIP_REID_STD}
    PRESETS = {"paper": CcafConfig.preset("paper"), "tiny": CcafConfig.preset("tiny")}

    def __init__(self, config: CcafConfig, backbone: nn.Module, spec: DataSpec) -> None:
        super().__init__(config, backbone, spec)
        bad = sorted(set(config.clothes_classes) - set(range(LIP_NUM_CLASSES)))
        if bad:
            raise ValueError(f"ccaf: clothes_classes {bad} are not LIP labels 0..{LIP_NUM_CLASSES - 1}")
        if config.use_cfm and spec.num_clothes < 1:
            raise ValueError("ccaf: CFM needs clothes ids, but the training split has none (num_clothes=0); "
                             "use a cloth-changing dataset or set params.use_cfm=false")
        self.register_buffer("fill", fill_values(backbone), persistent=False)
        dim = backbone.embed_dim
        if self.needs_id_prompts:
            self.prompt_learner = PromptLearner(backbone.token_embedding, backbone.tokenizer, spec.num_classes,
                                                n_ctx=config.n_ctx, template=config.id_template,
                                                init_std=config.ctx_init_std)
        if self.needs_clothes_prompts:
            self.clothes_prompt_learner = PromptLearner(backbone.token_embedding, backbone.tokenizer,
                                                        spec.num_clothes, n_ctx=config.n_ctx,
                                                        template=config.clothes_template, init_std=config.ctx_init_std)
        self.head = DualNeckHead(backbone.vision_width, dim, spec.num_classes)
        if config.use_i2i:
            self.shield_encoder = copy.deepcopy(backbone.image_tower())
            self.shield_head = DualNeckHead(backbone.vision_width, dim, spec.num_classes)
        if config.use_cfm:
            self.proj_c = ClothesProjection(dim)
            if config.cfm_supervision == "onehot":
                self.clothes_classifier = nn.Linear(dim, spec.num_clothes, bias=False)
        self.objective = config.image.objective()
        self._image_banks: dict[str, FeatureBank] = {}  # stage 1: frozen shielding / clothes image features
        self._text_banks: dict[str, FeatureBank] = {}  # stage 2: frozen identity / clothes prompt features

    @property
    def needs_id_prompts(self) -> bool:
        cfg = self.config
        return cfg.use_i2t or (cfg.use_i2i and cfg.use_shield_i2t)

    @property
    def needs_clothes_prompts(self) -> bool:
        return self.config.use_cfm and self.config.cfm_supervision == "prompts"

    # -- stages ------------------------------------------------------------
    def stages(self) -> list[Stage]:
        cfg, img = self.config, self.config.image
        trainable = [*image_side_prefixes(self.backbone), "head."]
        new = ["head."]
        if cfg.use_i2i:
            trainable += ["shield_encoder.", "shield_head."]
            new.append("shield_head.")
        if cfg.use_cfm:
            trainable.append("proj_c.")
            new.append("proj_c.")
            if cfg.cfm_supervision == "onehot":
                trainable.append("clothes_classifier.")
                new.append("clothes_classifier.")
        weights = [("id", img.id_loss_weight), ("triplet", img.triplet_loss_weight)]
        if cfg.use_i2t:
            weights.append(("i2tce", 1.0))
        if cfg.use_i2i:
            weights += [("id_shield", img.id_loss_weight), ("triplet_shield", img.triplet_loss_weight),
                        ("con", cfg.lambda_con)]
            if cfg.use_shield_i2t:
                weights.append(("i2tce_shield", 1.0))
        if cfg.use_cfm:
            weights += [(self.clothes_term, 1.0), ("dis", cfg.lambda_dis)]
        image = Stage(name=IMAGE_STAGE, epochs=img.epochs, lr=img.lr, trainable=tuple(trainable), optimizer="adam",
                      weight_decay=img.weight_decay, schedule=cfg.image_schedule, warmup_epochs=img.warmup_epochs,
                      warmup_factor=img.warmup_factor, milestones=tuple(img.milestones), gamma=img.gamma,
                      schedule_offset=img.schedule_offset,
                      param_groups=tuple((p, img.head_lr_mult) for p in new) if img.head_lr_mult != 1.0 else (),
                      loss_weights=tuple(weights))
        prompts = tuple(p for p, on in (("prompt_learner.", self.needs_id_prompts),
                                        ("clothes_prompt_learner.", self.needs_clothes_prompts)) if on)
        if not prompts:
            return [image]
        return [cfg.prompt.stage(PROMPT_STAGE, trainable=prompts), image]

    @property
    def clothes_term(self) -> str:
        return "i2tce_clothes" if self.config.cfm_supervision == "prompts" else "ce_clothes"

    @torch.no_grad()
    def begin_stage(self, stage: Stage, train_batches: Callable[[], Iterable[dict]]) -> None:
        with evaluating(self):
            if stage.name == PROMPT_STAGE:
                self._image_banks = self.cache_image_features(train_batches())
            elif stage.name == IMAGE_STAGE:
                self._image_banks = {}
                self._text_banks = {}
                if self.needs_id_prompts:
                    self._text_banks["id"] = FeatureBank(self.prompt_features(self.prompt_learner),
                                                         what="identity text features")
                if self.needs_clothes_prompts:
                    self._text_banks["clothes"] = FeatureBank(self.prompt_features(self.clothes_prompt_learner),
                                                              what="clothes text features")
            else:
                raise ValueError(f"ccaf has stages {PROMPT_STAGE!r} and {IMAGE_STAGE!r}, got {stage.name!r}")

    def cache_image_features(self, batches: Iterable[dict]) -> dict[str, FeatureBank]:
        """Frozen E_v's projected features of the shielding images (keyed by index,
        checked against pids) and of the clothes images (checked against clothes ids)."""
        shield, clothes = [], []
        for b in batches:
            x_s, x_c = self.masked_images(b)
            if self.needs_id_prompts:
                shield.append((b["index"], self.backbone.encode_image(x_s).proj.float(), b["pid"]))
            if self.needs_clothes_prompts:
                self.check_clothes_ids(b["clothes_id"])
                clothes.append((b["index"], self.backbone.encode_image(x_c).proj.float(), b["clothes_id"]))
        banks = {}
        if self.needs_id_prompts:
            banks["id"] = FeatureBank.from_batches(shield, what="stage-1 shielding-image features")
        if self.needs_clothes_prompts:
            banks["clothes"] = FeatureBank.from_batches(clothes, what="stage-1 clothes-image features")
        return banks

    def prompt_features(self, learner: PromptLearner, chunk: int = 64) -> torch.Tensor:
        out = []
        for start in range(0, learner.num_classes, chunk):
            labels = torch.arange(start, min(start + chunk, learner.num_classes), device=learner.ctx.device)
            out.append(self.encode_prompts(learner, labels).float())
        return torch.cat(out)

    def encode_prompts(self, learner: PromptLearner, labels: torch.Tensor) -> torch.Tensor:
        embeds, eos = learner(labels)
        return self.backbone.encode_text_embeddings(embeds, eos)

    def masked_images(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return shielding_and_clothes_images(batch["image"], batch["parsing"], self.fill, self.config.clothes_classes)

    def check_clothes_ids(self, clothes_id: torch.Tensor) -> None:
        if bool((clothes_id < 0).any()) or bool((clothes_id >= self.spec.num_clothes).any()):
            raise ValueError(f"ccaf: clothes ids must be 0..{self.spec.num_clothes - 1} on the training split, got "
                             f"{sorted(set(clothes_id.tolist()))[:10]}")

    # -- training ----------------------------------------------------------
    def training_step(self, batch: dict, stage: Stage) -> dict[str, torch.Tensor]:
        if stage.name == PROMPT_STAGE:
            return self.prompt_step(batch)
        if stage.name == IMAGE_STAGE:
            return self.image_step(batch)
        raise ValueError(f"ccaf has stages {PROMPT_STAGE!r} and {IMAGE_STAGE!r}, got {stage.name!r}")

    def prompt_step(self, batch: dict) -> dict[str, torch.Tensor]:
        """Eq. 16. One text pass per distinct label in the batch (as clip_reid)."""
        if not self._image_banks:
            raise RuntimeError("ccaf stage 'prompt': no cached image features; call begin_stage first")
        cfg = self.config.prompt
        terms: dict[str, torch.Tensor] = {}
        if self.needs_id_prompts:
            pids = batch["pid"]
            feats = self._image_banks["id"].lookup(batch["index"], pids)
            labels, position = torch.unique(pids, return_inverse=True)
            text = self.encode_prompts(self.prompt_learner, labels)[position]
            terms.update(i2t_t2i_losses(feats, text, pids, cfg.temperature, cfg.normalize))
        if self.needs_clothes_prompts:
            cids = batch["clothes_id"]
            self.check_clothes_ids(cids)
            feats = self._image_banks["clothes"].lookup(batch["index"], cids)
            labels, position = torch.unique(cids, return_inverse=True)
            text = self.encode_prompts(self.clothes_prompt_learner, labels)[position]
            losses = i2t_t2i_losses(feats, text, cids, cfg.temperature, cfg.normalize)
            terms.update(i2t_clothes=losses["i2t"], t2i_clothes=losses["t2i"])
        return terms

    def image_step(self, batch: dict) -> dict[str, torch.Tensor]:
        """Eq. 17's terms, unweighted (see the module docstring for the gradient routing)."""
        cfg = self.config
        pids = batch["pid"]
        if (self.needs_id_prompts or self.needs_clothes_prompts) and not self._text_banks:
            raise RuntimeError("ccaf stage 'image': no prompt features; call begin_stage first")
        out = self.head(encode_images(self.backbone, batch, cfg.sie, cfg.image.triplet_on_penultimate))
        terms = dict(self.objective(out, pids))
        if cfg.use_i2t:
            terms["i2tce"] = self.objective.id_loss(self.i2t_logits(out.proj, self._text_banks["id"].features), pids)
        if cfg.use_i2i:
            x_s, _ = self.masked_images(batch)
            shield = self.shield_head(encode_images(self.shield_encoder, {**batch, "image": x_s}, cfg.sie,
                                                    cfg.image.triplet_on_penultimate))
            shield_terms = self.objective(shield, pids)
            terms.update(id_shield=shield_terms["id"], triplet_shield=shield_terms["triplet"])
            if cfg.use_shield_i2t:
                terms["i2tce_shield"] = self.objective.id_loss(
                    self.i2t_logits(shield.proj, self._text_banks["id"].features), pids)
            terms["con"] = centre_distance(out.proj.float(), shield.proj.float(), pids)
        if cfg.use_cfm:
            cids = batch["clothes_id"]
            self.check_clothes_ids(cids)
            f = out.proj.float()
            f_c = self.proj_c(f.detach())  # L^c_i2tce reaches Proj_c only
            if cfg.cfm_supervision == "prompts":
                logits = self.i2t_logits(f_c, self._text_banks["clothes"].features)
            else:
                logits = self.clothes_classifier(f_c)
            terms[self.clothes_term] = self.objective.id_loss(logits, cids)
            f_c_fixed = self.proj_c(f, train_weight=False)  # L_dis reaches E_v only
            cos = F.cosine_similarity(f, f_c_fixed, dim=-1).mean()
            terms["dis"] = cos if cfg.dis_sign == "dissimilar" else -cos
        return terms

    def i2t_logits(self, image_proj: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        if self.config.i2t_logits == "raw":
            return image_proj.float() @ text_features.T
        scale = self.backbone.logit_scale.detach().exp()
        return scale * F.normalize(image_proj.float(), dim=-1) @ F.normalize(text_features, dim=-1).T

    # -- inference ---------------------------------------------------------
    def embed_image(self, batch: dict) -> torch.Tensor:
        """E_v alone (the shielding stream and CFM are training-only)."""
        feats = encode_images(self.backbone, batch, self.config.sie)
        return DualNeckHead.inference_feature(self.head(feats), self.config.neck_feat)


class ClothesProjection(nn.Module):
    """CFM's Proj_c, ``f -> f P`` (C x C, no bias; PyTorch's default linear init).
    ``train_weight=False`` applies the same weight detached, for L_dis. The weight is
    only ever read inside this module's ``forward``, where ZeRO-3 gathers it."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(nn.Linear(dim, dim, bias=False).weight.detach().clone())

    def forward(self, x: torch.Tensor, train_weight: bool = True) -> torch.Tensor:
        return F.linear(x, self.weight if train_weight else self.weight.detach())

    def extra_repr(self) -> str:
        return f"dim={self.weight.shape[0]}"


def centre_distance(raw: torch.Tensor, shield: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
    """Eq. 10: mean over the batch's identities of ``||c_i - c_i^s||^2``, the
    centres being per-identity means of each stream's features."""
    labels, position = torch.unique(pids, return_inverse=True)
    counts = torch.zeros(len(labels), device=raw.device, dtype=raw.dtype).index_add_(
        0, position, torch.ones_like(position, dtype=raw.dtype))
    diff = raw - shield
    centre_diff = torch.zeros(len(labels), raw.shape[1], device=raw.device, dtype=raw.dtype).index_add_(
        0, position, diff) / counts[:, None]
    return centre_diff.pow(2).sum(1).mean()


__all__ = ["CLOTHES_CLASSES", "Ccaf", "CcafConfig", "ClothesProjection", "centre_distance", "clothes_mask",
           "fill_values", "shielding_and_clothes_images"]
