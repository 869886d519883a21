"""Offline tokenizers for the CLIP text tower, and the on-disk cache they share
with the pretrained tiny CLIP.

Two sources, one interface (:class:`ClipTokenizer`):

* a user's local Hugging Face directory (``CLIPTokenizer`` / ``CLIPTokenizerFast``
  files saved by ``save_pretrained``), loaded with ``local_files_only=True``;
* a word-level tokenizer trained with the ``tokenizers`` library on the synthetic
  captions (the embedded default, where no real CLIP vocabulary exists).

Both are wrapped as a transformers fast tokenizer, so padding, truncation and
special tokens follow one code path. Truncation always keeps BOS and EOS (the
post-processor adds them after truncating the words), because the text tower
pools at the EOS position.

Special ids of the word-level tokenizer: ``<pad>`` = 0, ``<unk>`` = 1, ``<bos>`` = 2
and ``<eos>`` = the *highest* id. The highest id makes CLIP-ReID-style pooling
(``input_ids.argmax(-1)``, which assumes EOT is the largest id as in OpenAI's BPE)
agree with our explicit first-EOS pooling, and ``eos != 2`` keeps transformers'
legacy argmax branch of ``CLIPTextModel`` out of the way should anyone call it.

The cache (``$REIDBENCH_CACHE`` or ``~/.cache/reidbench``) holds directories built
once under a file lock and published by an atomic rename, so concurrent
processes (Ray workers, parallel tests) never see a half-written entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from ..cache import cache_root

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")
COMPLETE_MARKER = ".complete"

# Bump when the default corpus or the tokenizer recipe changes: it is part of the cache key.
WORD_TOKENIZER_VERSION = 1


# ---------------------------------------------------------------- cache ---
def config_key(payload: dict) -> str:
    """Short stable hash of a JSON-serialisable config (sorted keys)."""
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def is_complete(directory: Path) -> bool:
    return (directory / COMPLETE_MARKER).is_file()


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path):
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        try:
            import fcntl
        except ImportError:  # non-POSIX: the atomic rename alone still prevents torn entries
            yield
            return
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def cached_directory(final: Path, build: Callable[[Path], None], force: bool = False) -> tuple[Path, bool]:
    """Return ``(final, built)``; build ``final`` with ``build(tmp_dir)`` unless a
    complete entry already exists (or ``force``).

    A second process asking for the same entry waits on the lock, then reuses
    what the first one built instead of building it again.
    """
    final = Path(final)
    with _exclusive_lock(final.parent / f"{final.name}.lock"):
        if is_complete(final) and not force:
            return final, False
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
        try:
            build(tmp)
            (tmp / COMPLETE_MARKER).write_text("ok\n")
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final, True


# ------------------------------------------------------------ tokenizer ---
class ClipTokenizer:
    """CLIP-style tokenizer with the interface the methods code against.

    ``tokenizer(texts)`` returns ``{"input_ids", "attention_mask"}`` LongTensors of
    shape ``[len(texts), context_length]``: BOS, words, EOS, then padding; texts
    longer than the context are truncated word-wise, EOS kept.
    """

    def __init__(self, hf_tokenizer, context_length: int) -> None:
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if getattr(hf_tokenizer, name) is None:
                raise ValueError(f"tokenizer {type(hf_tokenizer).__name__} has no {name}; a CLIP tokenizer needs BOS, EOS and PAD")
        self.hf = hf_tokenizer
        self.context_length = int(context_length)

    @property
    def bos_token_id(self) -> int:
        return int(self.hf.bos_token_id)

    @property
    def eos_token_id(self) -> int:
        return int(self.hf.eos_token_id)

    @property
    def pad_token_id(self) -> int:
        return int(self.hf.pad_token_id)

    @property
    def unk_token_id(self) -> int | None:
        return None if self.hf.unk_token_id is None else int(self.hf.unk_token_id)

    @property
    def vocab_size(self) -> int:
        """Number of ids (including special and added tokens): the minimum size of the embedding table."""
        return len(self.hf)

    def __call__(self, texts: Sequence[str] | str) -> dict[str, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        out = self.hf(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=self.context_length,
            return_tensors="pt",
        )
        return {"input_ids": out["input_ids"].long(), "attention_mask": out["attention_mask"].long()}

    def encode_words(self, text: str) -> list[int]:
        """Ids of ``text`` without BOS/EOS/padding (prompt learners splice these)."""
        return list(self.hf(text, add_special_tokens=False, verbose=False)["input_ids"])

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def unknown_fraction(self, texts: Sequence[str]) -> float:
        """Share of word tokens mapped to ``<unk>`` (how far ``texts`` are from the vocabulary)."""
        unk = self.unk_token_id
        ids = [i for t in texts for i in self.encode_words(t)]
        if not ids or unk is None or unk in (self.bos_token_id, self.eos_token_id, self.pad_token_id):
            return 0.0
        return sum(i == unk for i in ids) / len(ids)

    def save(self, directory: str | os.PathLike) -> None:
        self.hf.save_pretrained(str(directory))

    def __repr__(self) -> str:
        return (
            f"ClipTokenizer({type(self.hf).__name__}, vocab_size={self.vocab_size}, "
            f"context_length={self.context_length}, bos={self.bos_token_id}, eos={self.eos_token_id}, "
            f"pad={self.pad_token_id})"
        )


def has_tokenizer_files(directory: Path) -> bool:
    directory = Path(directory)
    return (directory / "tokenizer.json").is_file() or (
        (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file()
    )


def load_tokenizer(directory: str | os.PathLike, context_length: int) -> ClipTokenizer:
    """Load the tokenizer saved in a local Hugging Face directory, never touching the network."""
    from transformers import AutoTokenizer

    directory = Path(directory)
    if not has_tokenizer_files(directory):
        raise FileNotFoundError(
            f"no tokenizer in {directory}: expected tokenizer.json (or vocab.json + merges.txt) "
            f"with tokenizer_config.json, as written by "
            f"CLIPTokenizer.from_pretrained('openai/clip-vit-base-patch16').save_pretrained('{directory}')"
        )
    hf = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    return ClipTokenizer(hf, context_length)


def train_word_tokenizer(texts: Iterable[str], context_length: int, min_frequency: int = 1) -> ClipTokenizer:
    """Train a lower-cased word-level tokenizer (words and punctuation marks are
    tokens) on ``texts`` with the ``tokenizers`` library.

    Word-level rather than BPE: the synthetic captions come from templates over a
    closed vocabulary of a few hundred words, where a word is the natural unit
    and a sub-word split would only lengthen sequences.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    pre_tokenizer = pre_tokenizers.Whitespace()

    counter = Tokenizer(models.WordLevel(unk_token=UNK))
    counter.normalizer, counter.pre_tokenizer = normalizer, pre_tokenizer
    trainer = trainers.WordLevelTrainer(special_tokens=[PAD, UNK, BOS], min_frequency=min_frequency, show_progress=False)
    counter.train_from_iterator(texts, trainer)
    vocab = dict(counter.get_vocab())
    if vocab[PAD] != 0 or vocab[UNK] != 1 or vocab[BOS] != 2:
        raise RuntimeError(f"tokenizers assigned unexpected special ids: {[(t, vocab[t]) for t in (PAD, UNK, BOS)]}")
    vocab[EOS] = len(vocab)  # highest id, see the module docstring

    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer, tok.pre_tokenizer = normalizer, pre_tokenizer
    tok.add_special_tokens([PAD, UNK, BOS, EOS])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])]
    )
    from tokenizers import decoders

    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces, tidies " ." -> "."
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK, model_max_length=context_length
    )
    return ClipTokenizer(hf, context_length)


def synthetic_fingerprint() -> str:
    """Hash of the synthetic generator's source (``synthetic.source_fingerprint``: the
    generator, the renderer and its kernels). Text and images both come from it, so any
    change there gives new cache keys (new tokenizer, new pretrained CLIP)."""
    from reidbench.datasets import synthetic

    return synthetic.source_fingerprint()


def default_tokenizer_corpus() -> list[str]:
    """Texts the default word-level tokenizer is trained on: what the synthetic
    generator writes, so that synthetic texts never meet ``<unk>``.

    ``synthetic.tokenizer_corpus()`` when the generator offers one; otherwise the
    captions of 1,000 small pretraining pairs (they mix every caption and
    description style the benchmarks use), every value of ``ATTRIBUTE_VOCAB``
    and its zero-shot prompt templates filled with those values.
    """
    from reidbench.datasets import synthetic

    if hasattr(synthetic, "tokenizer_corpus"):
        return list(synthetic.tokenizer_corpus())
    _, captions, _ = synthetic.pretraining_pairs(n_images=1000, seed=12345, image_size=(32, 16))
    texts = list(captions)
    vocab = getattr(synthetic, "ATTRIBUTE_VOCAB", {})
    for key, values in vocab.items():
        if key == "prompt_templates":
            texts += [t.format(v) for factor, t in values.items() for v in vocab.get(factor, [])]
        else:
            texts.append(" ".join(str(v) for v in values))
    return texts


def default_word_tokenizer(context_length: int = 32, cache_dir: str | os.PathLike | None = None) -> ClipTokenizer:
    """The word-level tokenizer of the embedded default, trained once and cached
    (``<cache>/tokenizers/word-<key>``, keyed by the recipe and the generator's source)."""
    recipe = {"version": WORD_TOKENIZER_VERSION, "synthetic": synthetic_fingerprint(), "context_length": context_length}
    final = cache_root(cache_dir) / "tokenizers" / f"word-{config_key(recipe)}"

    def build(tmp: Path) -> None:
        texts = default_tokenizer_corpus()
        train_word_tokenizer(texts, context_length).save(tmp)
        (tmp / "recipe.json").write_text(json.dumps({**recipe, "texts": len(texts)}, indent=2, sort_keys=True))

    path, _ = cached_directory(final, build)
    return load_tokenizer(path, context_length)


# ------------------------------------------------------ BERT WordPiece ---
WORDPIECE_VERSION = 1
BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0-4 of the offline vocabulary


def wordpiece_vocabulary(texts: Iterable[str]) -> list[str]:
    """A BERT WordPiece vocabulary (one token per line of ``vocab.txt``) for ``texts``:
    the special tokens, every word and punctuation mark of ``texts`` as BERT's own
    normaliser and pre-tokeniser split them (lower-cased), then single characters
    a-z, 0-9 and their ``##`` continuations, so that a word outside ``texts`` is
    spelt letter by letter rather than lost to ``[UNK]``."""
    from tokenizers import normalizers, pre_tokenizers

    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words = {piece for text in texts for piece, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))}
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    pieces = sorted(words | set(chars)) + [f"##{c}" for c in chars]
    return [*BERT_SPECIALS, *(p for p in pieces if p not in BERT_SPECIALS)]


def bert_tokenizer(hf_tokenizer, context_length: int) -> ClipTokenizer:
    """Wrap a BERT tokenizer in the common interface: ``[CLS]`` is its BOS and
    ``[SEP]`` its EOS (BERT's tokenizers name no BOS/EOS of their own)."""
    if hf_tokenizer.cls_token is None or hf_tokenizer.sep_token is None:
        raise ValueError(f"tokenizer {type(hf_tokenizer).__name__} has no [CLS]/[SEP] tokens; a BERT text tower needs both")
    hf_tokenizer.bos_token = hf_tokenizer.cls_token
    hf_tokenizer.eos_token = hf_tokenizer.sep_token
    return ClipTokenizer(hf_tokenizer, context_length)


def wordpiece_tokenizer(vocabulary: Sequence[str], context_length: int) -> ClipTokenizer:
    """A lower-casing BERT WordPiece tokenizer over ``vocabulary`` (built offline)."""
    from transformers import BertTokenizer

    hf = BertTokenizer(vocab={token: i for i, token in enumerate(vocabulary)}, do_lower_case=True,
                       model_max_length=context_length)
    return bert_tokenizer(hf, context_length)


def has_bert_tokenizer_files(directory: Path) -> bool:
    return (Path(directory) / "tokenizer.json").is_file() or (Path(directory) / "vocab.txt").is_file()


def load_bert_tokenizer(directory: str | os.PathLike, context_length: int) -> ClipTokenizer:
    """The BERT tokenizer saved in a local Hugging Face directory, never touching the network."""
    from transformers import AutoTokenizer

    directory = Path(directory)
    if not has_bert_tokenizer_files(directory):
        raise FileNotFoundError(f"no tokenizer in {directory}: expected tokenizer.json or vocab.txt "
                                f"(with tokenizer_config.json), as BertTokenizer.save_pretrained writes")
    return bert_tokenizer(AutoTokenizer.from_pretrained(str(directory), local_files_only=True), context_length)


def default_wordpiece_tokenizer(context_length: int, cache_dir: str | os.PathLike | None = None) -> ClipTokenizer:
    """The WordPiece tokenizer of BERT text towers without pretrained weights:
    vocabulary from :func:`default_tokenizer_corpus` (what the synthetic generator
    writes), written once to ``<cache>/tokenizers/wordpiece-<key>/vocab.txt``."""
    recipe = {"version": WORDPIECE_VERSION, "synthetic": synthetic_fingerprint()}
    final = cache_root(cache_dir) / "tokenizers" / f"wordpiece-{config_key(recipe)}"

    def build(tmp: Path) -> None:
        vocabulary = wordpiece_vocabulary(default_tokenizer_corpus())
        (tmp / "vocab.txt").write_text("\n".join(vocabulary) + "\n")
        (tmp / "recipe.json").write_text(json.dumps({**recipe, "tokens": len(vocabulary)}, indent=2, sort_keys=True))

    path, _ = cached_directory(final, build)
    return wordpiece_tokenizer((path / "vocab.txt").read_text().splitlines(), context_length)


__all__ = [
    "BERT_SPECIALS",
    "bert_tokenizer",
    "default_wordpiece_tokenizer",
    "has_bert_tokenizer_files",
    "load_bert_tokenizer",
    "wordpiece_tokenizer",
    "wordpiece_vocabulary",
    "ClipTokenizer",
    "cache_root",
    "cached_directory",
    "config_key",
    "default_word_tokenizer",
    "has_tokenizer_files",
    "load_tokenizer",
    "train_word_tokenizer",
]
