"""Tiny randomly initialised models, built from configs and saved to a folder, that the
annotation commands load exactly as they load real ones (``from_pretrained(...,
local_files_only=True)``). They exist so that the commands can be tested end to end
without a download; what they write is gibberish.

* :func:`build_tiny_vlm`: a LLaVA-architecture image-text-to-text model (a 2-layer CLIP
  vision tower, a 2-layer Llama), a word-level ``tokenizers`` tokenizer wrapped as
  ``PreTrainedTokenizerFast``, a CLIP image processor and a chat template in LLaVA-1.5's
  ``USER: <image>\\n... ASSISTANT:`` form.
* :func:`build_tiny_segformer`: a 1-stage SegFormer whose ``id2label`` names are
  ATR-style (``Upper-clothes``, ``Left-arm``, ...) so the label -> LIP mapping is read
  from the config as it is for a real human-parsing model.
"""

from __future__ import annotations

import os

__all__ = ["TINY_PARSING_LABELS", "build_tiny_segformer", "build_tiny_vlm"]

# The vocabulary: the words of the prompts the commands send and of a person caption, so
# prompts tokenise without <unk> (a real tokenizer has them all).
_WORDS = """describe the most obvious one people using this template for no more than 45 words a is wearing
and shoes carrying has whether wear glasses age gender upper lower clothes others hair length person's identity
clothing style use very detailed descriptive terse concise list short long sentence sentences about in as key value
person man woman young old middle-aged red blue black white green grey yellow pink brown t-shirt shirt jacket coat trousers
shorts skirt backpack bag handbag cap he she his her with of only do not mention biological traits such gender
build colours patterns accessories apparel answer write key-value pairs separated by semicolons comma-separated
phrases""".split()
_PUNCT = list(".,:;[]()!?'\"-/")
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: "
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "{% else %}ASSISTANT: {% for item in message['content'] %}{{ item['text'] }}{% endfor %}</s>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %} ASSISTANT:{% endif %}"
)


def _word_tokenizer(extra_words: tuple[str, ...] = ()):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<pad>", "<s>", "</s>", "<image>"]
    words = sorted({w.lower() for w in (*_WORDS, *extra_words, "user", "assistant")} | set(_PUNCT))
    vocab = {tok: i for i, tok in enumerate(specials + [w for w in words if w not in specials])}
    vocab["\n"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    # <image> is an added special token, so the pre-tokenizer never splits it.
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Punctuation(behavior="isolated")])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins with spaces, tidies punctuation
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", extra_special_tokens={"image_token": "<image>"},
                                   padding_side="left")
    fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return fast


def build_tiny_vlm(folder: str, seed: int = 0, image_size: int = 32, patch: int = 8, hidden: int = 32) -> str:
    """Save a tiny random LLaVA (model, tokenizer, processor, chat template) to ``folder``."""
    import torch
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    tokenizer = _word_tokenizer()
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    vision = CLIPVisionConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                              num_attention_heads=2, image_size=image_size, patch_size=patch, projection_dim=hidden)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                       num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_id,
                         image_seq_length=(image_size // patch) ** 2, vision_feature_select_strategy="default",
                         vision_feature_layer=-1)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": image_size},
                                           crop_size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer, patch_size=patch, vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE, num_additional_image_tokens=1)
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


# ATR-style names, the label set of the common SegFormer clothes-parsing checkpoints; all
# of them have a LIP class (``parse.lip_mapping``), unlike ``Belt`` / ``Bag``.
TINY_PARSING_LABELS = ("Background", "Hat", "Hair", "Sunglasses", "Upper-clothes", "Skirt", "Pants", "Dress",
                       "Left-shoe", "Right-shoe", "Face", "Left-leg", "Right-leg", "Left-arm", "Right-arm", "Scarf")


def build_tiny_segformer(folder: str, seed: int = 0, labels: tuple[str, ...] = TINY_PARSING_LABELS,
                         size: int = 32) -> str:
    """Save a tiny random SegFormer (model + image processor) whose ``id2label`` is ``labels``."""
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    config = SegformerConfig(num_channels=3, num_encoder_blocks=1, depths=[1], sr_ratios=[1], hidden_sizes=[16],
                             patch_sizes=[7], strides=[4], num_attention_heads=[1], mlp_ratios=[2],
                             decoder_hidden_size=16, id2label=dict(enumerate(labels)),
                             label2id={name: i for i, name in enumerate(labels)})
    torch.manual_seed(seed)
    model = SegformerForSemanticSegmentation(config).eval()
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder)
    SegformerImageProcessor(size={"height": size, "width": size}).save_pretrained(folder)
    return folder
