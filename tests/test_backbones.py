"""Backbones: CLIP presets, shapes, position-table interpolation, SIE, text pooling,
loading local Hugging Face directories, tokenizers, the cache lock; the registry and
the API every kind shares (parametrised over list_backbones()); the vit_bert kind."""

from __future__ import annotations

import copy
import json
import threading
import time

import pytest
import torch

from reidbench.backbones import (
    PretrainedCLIPNotFound,
    ReidCLIP,
    build_backbone,
    build_clip,
    build_vit_bert,
    count_parameters,
    get_preset,
    interpolate_pos_embedding,
    list_backbones,
    list_presets,
)
from reidbench.backbones.api import TextFeatures
from reidbench.backbones.tokenizer import cached_directory, load_tokenizer, train_word_tokenizer

CAPTIONS = [
    "A person in a red top and blue trousers.",
    "A woman wearing a green jacket, black shorts and white shoes.",
    "A man with short brown hair in a grey coat and dark jeans.",
]


@pytest.fixture(scope="module")
def word_tok():
    return train_word_tokenizer(CAPTIONS, context_length=32)


def tiny_config(tok, grid=(8, 4)):
    return get_preset("tiny").clip_config(tok.vocab_size, tok.eos_token_id, tok.bos_token_id, tok.pad_token_id, grid)


@pytest.fixture(scope="module")
def tiny(word_tok):
    torch.manual_seed(0)
    return ReidCLIP(tiny_config(word_tok), word_tok, image_size=(128, 64), preset="tiny").eval()


@pytest.fixture(scope="module")
def clip_tokenizer_dir(tmp_path_factory):
    """An OpenAI-style BPE CLIPTokenizer written offline: letters and end-of-word letters, two merges."""
    from transformers import CLIPTokenizer

    d = tmp_path_factory.mktemp("cliptok")
    letters = list("abcdefghijklmnopqrstuvwxyz.,")
    vocab = {c: i for i, c in enumerate(letters)}
    vocab.update({c + "</w>": len(letters) + i for i, c in enumerate(letters)})
    for extra in ("re", "red</w>", "<|startoftext|>", "<|endoftext|>"):
        vocab[extra] = len(vocab)
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\nr e\nre d</w>\n")
    CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt")).save_pretrained(str(d))
    return d


# ------------------------------------------------------------------ presets
def test_presets_listed_and_unknown_preset_named():
    assert list_presets() == ["tiny", "tiny-s12", "vit-b16", "vit-b16-s12"]
    with pytest.raises(KeyError, match="known presets: tiny, tiny-s12, vit-b16, vit-b16-s12"):
        get_preset("vit-l14")


def test_vit_b16_has_clip_parameter_count(clip_tokenizer_dir):
    """The ViT-B/16 CLIP of the papers: 149.6M parameters (meta device: no memory, no init cost)."""
    from transformers import CLIPModel

    tok = load_tokenizer(clip_tokenizer_dir, context_length=77)
    spec = get_preset("vit-b16")
    with torch.device("meta"):
        square = ReidCLIP(spec.clip_config(49408, tok.eos_token_id, tok.bos_token_id, tok.pad_token_id, (14, 14)), tok, (224, 224))
        person = ReidCLIP(spec.clip_config(49408, tok.eos_token_id, tok.bos_token_id, tok.pad_token_id, (16, 8)), tok, (256, 128))
        reference = CLIPModel(spec.clip_config(49408, tok.eos_token_id, tok.bos_token_id, tok.pad_token_id, (14, 14)))
    assert count_parameters(square) == count_parameters(reference) == 149_620_737
    assert round(count_parameters(square) / 1e6, 1) == 149.6
    # 256x128 crops: a 1 + 16*8 position table instead of 1 + 14*14.
    assert person.patch_grid == (16, 8)
    assert person.vision.embeddings.position_embedding.weight.shape == (129, 768)
    assert count_parameters(square) - count_parameters(person) == (197 - 129) * 768
    assert (person.embed_dim, person.vision_width, person.text_width) == (512, 768, 512)


# ------------------------------------------------------------------- shapes
def test_tiny_encoder_output_shapes(tiny, word_tok):
    pixels = torch.randn(3, 3, 128, 64)
    with torch.no_grad():
        feats = tiny.encode_image(pixels, return_hidden=True)
        batch = word_tok(CAPTIONS)
        text = tiny.encode_text(batch["input_ids"], batch["attention_mask"])
        eos = tiny.eos_positions(batch["input_ids"])
        spliced = tiny.encode_text_embeddings(tiny.token_embedding(batch["input_ids"]), eos)
    assert tiny.patch_grid == (8, 4) and tiny.image_size == (128, 64)
    assert feats.tokens.shape == (3, 33, 192)
    assert feats.cls.shape == (3, 192) and torch.equal(feats.cls, feats.tokens[:, 0])
    assert feats.proj.shape == (3, 128)
    assert len(feats.hidden_states) == 1 + 4 and feats.hidden_states[-1].shape == (3, 33, 192)
    assert batch["input_ids"].shape == (3, 32) and batch["input_ids"].dtype == torch.long
    assert text.shape == spliced.shape == (3, 128)
    assert tiny.token_embedding.weight.shape == (word_tok.vocab_size, 128)


def test_cls_projection_is_clips_image_embedding(tiny):
    """proj = visual_projection(post_layernorm(cls)) and tokens are post-layernormed."""
    pixels = torch.randn(2, 3, 128, 64)
    with torch.no_grad():
        feats = tiny.encode_image(pixels, return_hidden=True)
        last = feats.hidden_states[-1]
        assert torch.allclose(feats.tokens, tiny.vision.post_layernorm(last), atol=1e-6)
        assert torch.allclose(feats.proj, tiny.visual_projection(tiny.vision.post_layernorm(last[:, 0])), atol=1e-6)


def test_wrong_image_size_is_a_clear_error(tiny):
    with pytest.raises(ValueError, match=r"\[B,3,128,64\]"):
        tiny.encode_image(torch.randn(1, 3, 256, 128))
    with pytest.raises(ValueError, match="multiple of the patch size"):
        ReidCLIP(tiny.config, tiny.tokenizer, image_size=(120, 64))


# ------------------------------------------------- position interpolation
def test_position_interpolation_keeps_cls_and_is_smooth():
    """A 224x224 ViT-B/16 table (14x14 grid) resized to the 16x8 person grid."""
    dim = 6
    rows, cols = torch.meshgrid(torch.arange(14.0), torch.arange(14.0), indexing="ij")

    def field(r, c):  # smooth in both directions, one channel per frequency
        return torch.stack([torch.sin(0.3 * r + 0.2 * k) + torch.cos(0.25 * c * (k + 1) / dim) for k in range(dim)], -1)

    cls = torch.randn(1, dim)
    table = torch.cat([cls, field(rows, cols).reshape(196, dim)])
    for mode in ("bilinear", "bicubic"):
        out = interpolate_pos_embedding(table, (14, 14), (16, 8), mode=mode)
        assert out.shape == (129, dim)
        assert torch.equal(out[0], table[0])
        grid = out[1:].reshape(16, 8, dim)
        # align_corners=False: output cell (i, j) samples source point ((i+.5)*14/16-.5, (j+.5)*14/8-.5)
        i, j = torch.meshgrid(torch.arange(16.0), torch.arange(8.0), indexing="ij")
        expect = field((i + 0.5) * 14 / 16 - 0.5, ((j + 0.5) * 14 / 8 - 0.5).clamp(0, 13))
        assert (grid - expect).abs().max() < 0.08, mode
        # neighbours stay close: no scrambled rows/columns
        assert (grid[1:] - grid[:-1]).abs().max() < 0.5 and (grid[:, 1:] - grid[:, :-1]).abs().max() < 0.9
    with pytest.raises(ValueError, match="expected 1 \\+ 14x14"):
        interpolate_pos_embedding(table[:-1], (14, 14), (16, 8))


# ---------------------------------------------------------------------- SIE
def test_sie_changes_the_output_by_camera(word_tok):
    torch.manual_seed(0)
    model = ReidCLIP(tiny_config(word_tok), word_tok, (128, 64), num_cameras=3, sie_coef=3.0).eval()
    pixels = torch.randn(1, 3, 128, 64).repeat(3, 1, 1, 1)
    with torch.no_grad():
        by_cam = model.encode_image(pixels, camids=torch.tensor([0, 1, 1])).proj
        plain = model.encode_image(pixels).proj
    assert torch.allclose(by_cam[1], by_cam[2], atol=1e-6)  # same camera, same output
    assert (by_cam[0] - by_cam[1]).abs().max() > 1e-3  # different camera, different output
    assert (by_cam[0] - plain[0]).abs().max() > 1e-3
    # CLIP-ReID: added to the CLS token only, scaled by sie_coef, before the transformer.
    emb = model.vision.embeddings
    tokens_cam = emb(pixels[:1], torch.tensor([2]))
    tokens_none = emb(pixels[:1])
    assert torch.allclose(tokens_cam[0, 0] - tokens_none[0, 0], 3.0 * emb.sie_embedding[2], atol=1e-5)
    assert torch.equal(tokens_cam[0, 1:], tokens_none[0, 1:])
    emb.sie_tokens = "all"  # TransReID's variant
    assert torch.allclose(emb(pixels[:1], torch.tensor([2]))[0, 5] - tokens_none[0, 5], 3.0 * emb.sie_embedding[2], atol=1e-5)
    emb.sie_tokens = "cls"
    with pytest.raises(ValueError, match="0-based camera indices below num_cameras=3"):
        model.encode_image(pixels, camids=torch.tensor([0, 1, 3]))


def test_camids_are_ignored_without_sie(tiny):
    pixels = torch.randn(2, 3, 128, 64)
    with torch.no_grad():
        assert torch.equal(tiny.encode_image(pixels, camids=torch.tensor([0, 5])).proj, tiny.encode_image(pixels).proj)


# --------------------------------------------------------------------- text
def test_spliced_embeddings_equal_token_ids_at_the_same_eos(tiny, word_tok):
    batch = word_tok(CAPTIONS + ["a red top"])
    ids = batch["input_ids"]
    eos = tiny.eos_positions(ids)
    lengths = batch["attention_mask"].sum(1)
    assert torch.equal(eos, lengths - 1)  # BOS words EOS, EOS is the last real token
    with torch.no_grad():
        a = tiny.encode_text(ids, batch["attention_mask"])
        b = tiny.encode_text_embeddings(tiny.token_embedding(ids), eos)
        # padding after EOS does not matter (causal attention)
        c = tiny.encode_text(ids[:, : int(lengths.max())])
        # pooling elsewhere gives something else
        d = tiny.encode_text_embeddings(tiny.token_embedding(ids), eos - 1)
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(a, c, atol=1e-5)
    assert (a - d).abs().max() > 1e-3


def test_rows_without_eos(tiny, word_tok):
    batch = word_tok(["a red top"])
    ids = batch["input_ids"].clone()
    ids[ids == word_tok.eos_token_id] = word_tok.pad_token_id
    with pytest.raises(ValueError, match="contain no EOS"):
        tiny.encode_text(ids)
    # with a mask, pooling falls back to the last attended token
    assert tiny.eos_positions(ids, batch["attention_mask"]).item() == batch["attention_mask"].sum().item() - 1


# ---------------------------------------------------------------- tokenizer
def test_word_tokenizer_round_trip_offline(word_tok, tmp_path):
    text = "A woman wearing a green jacket, black shorts and white shoes."
    words = word_tok.encode_words(text)
    assert word_tok.decode(words) == text.lower()
    assert word_tok.unk_token_id not in words
    assert word_tok.encode_words("a purple top")[1] == word_tok.unk_token_id
    batch = word_tok([text])
    row = batch["input_ids"][0].tolist()
    n = len(words)
    assert row[0] == word_tok.bos_token_id and row[1 : n + 1] == words and row[n + 1] == word_tok.eos_token_id
    assert set(row[n + 2 :]) == {word_tok.pad_token_id}
    assert batch["attention_mask"][0].sum().item() == n + 2
    assert (word_tok.pad_token_id, word_tok.unk_token_id, word_tok.bos_token_id) == (0, 1, 2)
    assert word_tok.eos_token_id == word_tok.vocab_size - 1  # highest id: argmax pooling agrees too
    # truncation keeps EOS as the last token
    long_row = word_tok([" ".join(["red"] * 100)])["input_ids"][0]
    assert long_row.shape == (32,) and long_row[-1].item() == word_tok.eos_token_id
    # save / load gives the same ids with no network
    word_tok.save(tmp_path)
    again = load_tokenizer(tmp_path, context_length=32)
    assert torch.equal(again(CAPTIONS)["input_ids"], word_tok(CAPTIONS)["input_ids"])


def test_hf_clip_tokenizer_from_local_dir(clip_tokenizer_dir):
    tok = load_tokenizer(clip_tokenizer_dir, context_length=16)
    batch = tok(["a red top", "red"])
    ids = batch["input_ids"]
    assert ids.shape == (2, 16)
    assert ids[0, 0].item() == tok.bos_token_id
    assert tok.decode(tok.encode_words("a red top")) == "a red top"
    # OpenAI's tokenizer pads with EOS: the first EOS marks the end of the text
    first_eos = (ids == tok.eos_token_id).int().argmax(1)
    assert torch.equal(first_eos, batch["attention_mask"].sum(1) - 1)


# ------------------------------------------------------ local HF directories
def test_missing_pretrained_directory_says_what_to_put_where(tmp_path):
    missing = tmp_path / "clip-vit-base-patch16"
    with pytest.raises(PretrainedCLIPNotFound) as err:
        build_clip("vit-b16", pretrained=missing)
    msg = str(err.value)
    assert str(missing) in msg and "does not exist" in msg
    for needed in ("config.json", "model.safetensors", "tokenizer.json", "save_pretrained", "openai/clip-vit-base-patch16"):
        assert needed in msg
    missing.mkdir()
    (missing / "config.json").write_text("{}")
    with pytest.raises(PretrainedCLIPNotFound, match="incomplete: no weights file .*; no tokenizer files"):
        build_clip("vit-b16", pretrained=missing)


def test_synthetic_weights_exist_for_tiny_only():
    with pytest.raises(ValueError, match="'tiny' preset only"):
        build_clip("vit-b16", pretrained="synthetic")


@pytest.fixture(scope="module")
def hf_clip_dir(tmp_path_factory, clip_tokenizer_dir):
    """A transformers CLIPModel with the tiny architecture at 128x128 (square 8x8 grid),
    saved with save_pretrained next to an OpenAI-style tokenizer."""
    import shutil

    from transformers import CLIPModel

    tok = load_tokenizer(clip_tokenizer_dir, context_length=32)
    d = tmp_path_factory.mktemp("hfclip")
    for f in clip_tokenizer_dir.iterdir():
        shutil.copy(f, d / f.name)
    config = get_preset("tiny").clip_config(tok.vocab_size, tok.eos_token_id, tok.bos_token_id, tok.pad_token_id, (8, 8))
    del config.reidbench_patch_grid  # a plain Hugging Face config
    torch.manual_seed(1)
    reference = CLIPModel(config).eval()
    reference.save_pretrained(str(d))
    return d, reference


def test_local_hf_clip_matches_transformers(hf_clip_dir):
    """Weights from a saved CLIPModel give CLIPModel's own image and text embeddings."""
    directory, reference = hf_clip_dir
    model = build_clip("tiny", pretrained=directory, image_size=(128, 128)).eval()
    pixels = torch.randn(2, 3, 128, 128)
    batch = model.tokenizer(["a red top", "red red"])
    with torch.no_grad():
        feats = model.encode_image(pixels)
        ref_img = reference.get_image_features(pixel_values=pixels).pooler_output
        ref_tokens = reference.vision_model(pixel_values=pixels).last_hidden_state
        text = model.encode_text(batch["input_ids"], batch["attention_mask"])
        ref_text = reference.get_text_features(**batch).pooler_output
    assert torch.allclose(feats.proj, ref_img, atol=1e-5)
    assert torch.allclose(feats.tokens, reference.vision_model.post_layernorm(ref_tokens), atol=1e-5)
    assert torch.allclose(text, ref_text, atol=1e-5)
    assert torch.equal(model.logit_scale, reference.logit_scale)


def test_local_hf_clip_is_resized_to_person_crops(hf_clip_dir):
    directory, reference = hf_clip_dir
    model = build_clip("tiny", pretrained=directory)  # default 128x64 person crop
    table = reference.vision_model.embeddings.position_embedding.weight.detach()
    assert model.patch_grid == (8, 4)
    assert torch.equal(model.vision.embeddings.position_embedding.weight.detach(), interpolate_pos_embedding(table, (8, 8), (8, 4)))
    bicubic = build_clip("tiny", pretrained=directory, pos_interpolation="bicubic")
    assert not torch.equal(bicubic.vision.embeddings.position_embedding.weight, model.vision.embeddings.position_embedding.weight)
    with pytest.raises(ValueError, match="different CLIP than preset 'vit-b16'.*vision_width: directory 192, preset 768"):
        build_clip("vit-b16", pretrained=directory)


def test_save_pretrained_round_trip(tmp_path, word_tok):
    torch.manual_seed(3)
    model = ReidCLIP(tiny_config(word_tok), word_tok, (128, 64), preset="tiny").eval()
    model.save_pretrained(tmp_path)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in tmp_path.iterdir()}
    loaded = build_clip("tiny", pretrained=tmp_path, num_cameras=2).eval()
    pixels = torch.randn(2, 3, 128, 64)
    batch = word_tok(CAPTIONS)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(pixels).proj, model.encode_image(pixels).proj)
        assert torch.equal(loaded.encode_texts(CAPTIONS), model.encode_text(**batch))
    assert loaded.vision.embeddings.sie_embedding.shape == (2, 192)  # fresh SIE table on top of CLIP weights


# -------------------------------------------------------------------- cache
def test_cache_entry_is_built_once_under_concurrency(tmp_path):
    builds = []

    def build(tmp):
        builds.append(1)
        time.sleep(0.3)
        (tmp / "weights").write_text("x")

    results = []
    threads = [threading.Thread(target=lambda: results.append(cached_directory(tmp_path / "entry", build))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1
    assert sorted(built for _, built in results) == [False, False, True]
    assert (tmp_path / "entry" / "weights").read_text() == "x"
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []  # no leftovers

    def failing(tmp):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        cached_directory(tmp_path / "other", failing)
    assert not (tmp_path / "other").exists()


# ===================================================================== registry
# Every registered kind must satisfy the API the methods use; the tests below are
# parametrised over list_backbones(), so a new kind is covered once registered.

KINDS = list_backbones()
TEXTS = ["a woman in a red coat and black shoes.", "a man wearing a blue shirt."]


def test_registry_lists_the_kinds_and_names_the_closest():
    assert {"clip", "vit_bert"} <= set(KINDS)
    with pytest.raises(ValueError, match=r"backbone.kind='vit-bert' is not a backbone kind; did you mean 'vit_bert'\?"):
        build_backbone("vit-bert", "tiny", None)


@pytest.fixture(scope="module", params=KINDS)
def kind_model(request):
    torch.manual_seed(0)
    return build_backbone(request.param, "tiny", None, num_cameras=2).eval()


def test_every_kind_has_the_shared_api(kind_model):
    m = kind_model
    h, w = m.image_size
    assert (h // m.patch_grid[0], w // m.patch_grid[1]) == (m.patch_size, m.patch_size)
    assert len(m.image_mean) == len(m.image_std) == 3
    for name in ("vision", "text", "visual_projection", "text_projection"):
        assert isinstance(getattr(m, name), torch.nn.Module), name
    assert m.logit_scale.dim() == 0 and m.logit_scale.requires_grad
    pixels = torch.randn(2, 3, h, w)
    with torch.no_grad():
        img = m.encode_image(pixels, torch.tensor([0, 1]), return_hidden=True)
    n_tokens = 1 + m.patch_grid[0] * m.patch_grid[1]
    assert img.tokens.shape == (2, n_tokens, m.vision_width)
    assert torch.equal(img.cls, img.tokens[:, 0]) and img.patches.shape == (2, n_tokens - 1, m.vision_width)
    assert img.proj.shape == (2, m.embed_dim)
    assert all(s.shape == (2, n_tokens, m.vision_width) for s in img.hidden_states) and len(img.hidden_states) >= 2
    with pytest.raises(ValueError, match="pixels"):
        m.encode_image(torch.randn(2, 3, h, w + m.patch_size))

    tok = m.tokenizer
    batch = tok(TEXTS)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == (2, tok.context_length) and tok.encode_words("red")
    assert m.token_embedding.weight.shape[1] == m.text_width
    eos = m.eos_positions(ids, mask)
    assert torch.equal(eos, mask.sum(1) - 1) and torch.all(ids[:, 0] == tok.bos_token_id)
    with torch.no_grad():
        feats = m.encode_text_tokens(ids, mask)
        pooled = m.encode_text(ids, mask)
        spliced = m.encode_text_embeddings(m.token_embedding(ids), eos)
        spliced_tokens = m.encode_text_embeddings_tokens(m.token_embedding(ids), eos)
        by_text = m.encode_texts(TEXTS)
    assert isinstance(feats, TextFeatures)
    assert feats.tokens.shape == (2, tok.context_length, m.text_width)
    assert torch.equal(feats.attention_mask, mask) and feats.pool_index.shape == (2,)
    assert pooled.shape == (2, m.embed_dim)
    for other in (feats.proj, spliced, spliced_tokens.proj, by_text):
        assert torch.allclose(other, pooled, atol=1e-5)
    real = mask.bool()
    assert torch.allclose(spliced_tokens.tokens[real], feats.tokens[real], atol=1e-5)


def test_padding_never_changes_a_text_embedding(kind_model):
    m = kind_model
    batch = m.tokenizer(TEXTS)
    ids, mask = batch["input_ids"].clone(), batch["attention_mask"]
    with torch.no_grad():
        before = m.encode_text(ids, mask)
        ids[mask == 0] = 7  # junk where the padding was
        after = m.encode_text(ids, mask)
    assert torch.allclose(before, after, atol=1e-5)


def test_sie_camera_changes_the_image_embedding(kind_model):
    m = kind_model
    pixels = torch.randn(1, 3, *m.image_size).repeat(2, 1, 1, 1)
    with torch.no_grad():
        out = m.encode_image(pixels, torch.tensor([0, 1])).proj
    assert (out[0] - out[1]).abs().max() > 1e-4


def test_prompt_learner_trains_on_every_kind(kind_model):
    from reidbench.methods.components import PromptLearner

    m = kind_model
    learner = PromptLearner(m.token_embedding, m.tokenizer, num_classes=3, n_ctx=2)
    embeds, eos = learner(torch.tensor([0, 2]))
    out = m.encode_text_embeddings(embeds, eos)
    assert out.shape == (2, m.embed_dim)
    out.sum().backward()
    assert learner.ctx.grad is not None and learner.ctx.grad[[0, 2]].abs().sum() > 0
    assert learner.ctx.grad[1].abs().sum() == 0
    m.zero_grad(set_to_none=True)


def test_image_tower_copy_starts_equal_and_trains_alone(kind_model):
    m = kind_model
    before = {k: v.clone() for k, v in m.state_dict().items()}
    tower = copy.deepcopy(m.image_tower())
    pixels, cams = torch.randn(2, 3, *m.image_size), torch.tensor([0, 1])
    with torch.no_grad():
        ref = m.encode_image(pixels, cams, return_hidden=True)
        got = tower(pixels, cams, return_hidden=True)
    assert torch.equal(got.tokens, ref.tokens) and torch.equal(got.proj, ref.proj)
    assert len(got.hidden_states) == len(ref.hidden_states)
    # The copy's state dict uses the backbone's own image-side names.
    own = m.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in tower.state_dict().items())

    optimizer = torch.optim.SGD(tower.parameters(), lr=0.5)
    tower.encode_image(pixels, cams).proj.pow(2).sum().backward()
    optimizer.step()
    with torch.no_grad():
        moved = tower(pixels, cams).proj
        still = m.encode_image(pixels, cams).proj
    assert (moved - ref.proj).abs().max() > 1e-4
    assert torch.equal(still, ref.proj)
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    assert all(p.grad is None for p in m.parameters())


def test_image_side_prefixes_are_the_image_tower(kind_model):
    from reidbench.methods.components import image_side_prefixes

    m = kind_model
    prefixes = image_side_prefixes(m)
    image = {f"backbone.{n}" for n, _ in m.named_parameters() if f"backbone.{n}".startswith(prefixes)}
    tower = {f"backbone.{n}" for n, _ in m.image_tower().named_parameters()}
    assert image == tower
    assert not any(n.startswith(("backbone.text.", "backbone.text_projection", "backbone.logit_scale")) for n in image)
    assert any("vision" in n for n in image) and "backbone.visual_projection.weight" in image


# ===================================================================== vit_bert
def test_clip_text_tower_raises_no_future_warning(tiny, word_tok):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        tiny.encode_text_tokens(**word_tok(CAPTIONS))


@pytest.fixture(scope="module")
def vit_bert_dir(tmp_path_factory):
    """Tiny ViT (square 64x64, a 4x4 grid as public ViTs are square) and BERT saved as
    Hugging Face directories, with a preprocessor config and the WordPiece tokenizer."""
    from transformers import BertModel, ViTModel

    from reidbench.backbones.tokenizer import default_wordpiece_tokenizer
    from reidbench.backbones.vit_bert import get_preset

    d = tmp_path_factory.mktemp("vitbert")
    spec = get_preset("tiny")
    torch.manual_seed(1)
    vit = ViTModel(spec.vit_config((64, 64)), add_pooling_layer=False).eval()
    tok = default_wordpiece_tokenizer(spec.context_length)
    bert = BertModel(spec.bert_config(tok.vocab_size, tok.pad_token_id), add_pooling_layer=False).eval()
    vit.save_pretrained(d / "vision")
    (d / "vision" / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.4, 0.5, 0.6],
                                                                       "image_std": [0.2, 0.3, 0.4]}))
    bert.save_pretrained(d / "text")
    tok.save(d / "text")
    return d, vit, bert


def test_vit_bert_loads_local_hf_directories(vit_bert_dir):
    directory, vit, bert = vit_bert_dir
    model = build_backbone("vit_bert", "tiny", str(directory)).eval()
    assert model.image_size == (128, 64) and model.patch_grid == (8, 4)
    assert model.image_mean == (0.4, 0.5, 0.6) and model.image_std == (0.2, 0.3, 0.4)
    # The 4x4 square table is resized once to the 8x4 person grid (CLS kept).
    table = vit.embeddings.position_embeddings[0].detach()
    assert torch.allclose(model.vision.embeddings.position_embeddings[0],
                          interpolate_pos_embedding(table, (4, 4), (8, 4)), atol=1e-6)
    # Every other ViT weight is the saved one: at the saved 64x64 the tokens equal ViTModel's.
    square = build_vit_bert("tiny", str(directory), image_size=(64, 64)).eval()
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(square.encode_image(pixels).tokens, vit(pixel_values=pixels).last_hidden_state, atol=1e-5)
        batch = model.tokenizer(TEXTS)
        ours = model.encode_text_tokens(batch["input_ids"], batch["attention_mask"]).tokens
        theirs = bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        pooled = model.encode_text(batch["input_ids"], batch["attention_mask"])
    real = batch["attention_mask"].bool()
    assert torch.allclose(ours[real], theirs[real], atol=1e-5)
    assert torch.allclose(pooled, model.text_projection(theirs[:, 0]), atol=1e-5)  # pooled at [CLS]


def test_vit_bert_loads_hub_checkpoint_layouts(vit_bert_dir, tmp_path):
    """The published checkpoints are task models with older parameter names
    (ViTForImageClassification: ``vit.encoder.layer.N.attention.attention.query``;
    BertForPreTraining: ``bert.`` prefix, LayerNorm ``gamma``/``beta``), plus heads we do not use."""
    import re
    import shutil

    from safetensors.torch import save_file

    directory, vit, bert = vit_bert_dir
    hub = tmp_path / "hub"
    shutil.copytree(directory, hub)

    def legacy_vit(key):
        key = re.sub(r"^layers\.", "encoder.layer.", key)
        for new, old in (("attention.q_proj", "attention.attention.query"), ("attention.k_proj", "attention.attention.key"),
                         ("attention.v_proj", "attention.attention.value"), ("attention.o_proj", "attention.output.dense"),
                         ("mlp.fc1", "intermediate.dense"), ("mlp.fc2", "output.dense")):
            key = key.replace(new, old)
        return "vit." + key

    vision = {legacy_vit(k): v.contiguous() for k, v in vit.state_dict().items()}
    vision["classifier.weight"], vision["classifier.bias"] = torch.zeros(5, 192), torch.zeros(5)
    save_file(vision, str(hub / "vision" / "model.safetensors"), metadata={"format": "pt"})
    text = {"bert." + k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v.contiguous()
            for k, v in bert.state_dict().items()}
    text["cls.predictions.bias"] = torch.zeros(bert.config.vocab_size)
    save_file(text, str(hub / "text" / "model.safetensors"), metadata={"format": "pt"})

    model = build_vit_bert("tiny", str(hub), image_size=(64, 64)).eval()
    pixels = torch.randn(2, 3, 64, 64)
    batch = model.tokenizer(TEXTS)
    with torch.no_grad():
        assert torch.allclose(model.encode_image(pixels).tokens, vit(pixel_values=pixels).last_hidden_state, atol=1e-5)
        ours = model.encode_text_tokens(batch["input_ids"], batch["attention_mask"]).tokens
        theirs = bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    real = batch["attention_mask"].bool()
    assert torch.allclose(ours[real], theirs[real], atol=1e-5)


def test_vit_bert_pretrained_folder_errors_say_what_is_missing(vit_bert_dir, tmp_path):
    import shutil

    from reidbench.backbones import PretrainedViTBertNotFound

    directory, _, _ = vit_bert_dir
    with pytest.raises(PretrainedViTBertNotFound, match=r"does not exist.*vision.*text"):
        build_backbone("vit_bert", "tiny", str(tmp_path / "nowhere"))
    broken = tmp_path / "broken"
    shutil.copytree(directory, broken)
    (broken / "text" / "tokenizer.json").unlink()
    (broken / "vision" / "model.safetensors").unlink()
    with pytest.raises(PretrainedViTBertNotFound) as info:
        build_backbone("vit_bert", "tiny", str(broken))
    message = str(info.value)
    assert f"{broken / 'vision'} has no model weights" in message
    assert f"{broken / 'text'} has no tokenizer files" in message

    # A weight missing from the file is an error, not a silently random tensor.
    from safetensors.torch import load_file, save_file

    partial = tmp_path / "partial"
    shutil.copytree(directory, partial)
    weights = partial / "text" / "model.safetensors"
    state = load_file(str(weights))
    save_file({k: v for k, v in state.items() if "layer.1.output.dense" not in k}, str(weights), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"text.*BERT weights do not fit.*missing \['encoder.layer.1.output.dense"):
        build_backbone("vit_bert", "tiny", str(partial))


def test_vit_bert_refuses_other_shapes_and_synthetic(vit_bert_dir, tmp_path):
    import shutil

    directory, _, _ = vit_bert_dir
    with pytest.raises(ValueError, match=r"different ViT/BERT than vit_bert preset 'base'.*vision_width: vision/ has 192, preset 768"):
        build_backbone("vit_bert", "base", str(directory))
    swapped = tmp_path / "swapped"
    shutil.copytree(directory / "text", swapped / "vision")
    shutil.copytree(directory / "text", swapped / "text")
    with pytest.raises(ValueError, match=r"swapped/vision/config.json is a 'bert' config, expected 'vit'"):
        build_backbone("vit_bert", "tiny", str(swapped))
    with pytest.raises(ValueError, match="'synthetic' is the tiny CLIP.*backbone.kind=clip only"):
        build_backbone("vit_bert", "tiny", "synthetic")
    with pytest.raises(ValueError, match="unknown vit_bert preset 'vit-b16'; known presets: base, tiny"):
        build_backbone("vit_bert", "vit-b16", None)


def test_vit_bert_base_has_vit_b16_and_bert_base_shapes():
    with torch.device("meta"):
        model = build_vit_bert("base")
    vision = count_parameters(model.vision)
    # ViT-B/16 without pooler: 85,798,656 at 224x224 (197 positions); 129 at 256x128.
    assert vision == 85_798_656 - (197 - 129) * 768
    assert count_parameters(model.text) == 108_891_648  # bert-base-uncased without pooler
    assert model.token_embedding.weight.shape == (30522, 768) and model.embed_dim == 768


def test_fake_clip_offers_text_tokens_and_a_copyable_tower():
    from fakes import FakeCLIP

    from reidbench.methods.components import image_side_prefixes

    torch.manual_seed(0)
    fake = FakeCLIP(num_cameras=2).eval()
    batch = fake.tokenizer(TEXTS)
    with torch.no_grad():
        feats = fake.encode_text_tokens(batch["input_ids"], batch["attention_mask"])
        assert torch.allclose(feats.proj, fake.encode_text(batch["input_ids"], batch["attention_mask"]), atol=1e-6)
    assert feats.tokens.shape == (2, fake.tokenizer.context_length, fake.text_width)
    tower = copy.deepcopy(fake.image_tower())
    pixels, cams = torch.randn(2, 3, *fake.image_size), torch.tensor([0, 1])
    with torch.no_grad():
        assert torch.equal(tower(pixels, cams).proj, fake.encode_image(pixels, cams).proj)
    assert {f"backbone.{n}" for n, _ in tower.named_parameters()} == {
        f"backbone.{n}" for n, _ in fake.named_parameters() if f"backbone.{n}".startswith(image_side_prefixes(fake))}
