"""``reidbench data caption``: CLIP-SCGI's captions for a real dataset (Sec. III-A of
the paper), from a local vision-language model.

Every image of the split is captioned with the paper's instruction, verbatim
(:data:`INSTRUCTION`), greedy decoding (:mod:`.vlm`). Each output is checked
(:func:`check_caption`): not empty, at most 45 words (the instruction's own limit), no
template slot left unfilled (no ``[...]`` or stray bracket), and not an echo of the
instruction. A failed output is retried (``--retries``, sampled, seeded by the image);
an image whose every attempt fails goes to ``OUT.failed.jsonl`` with its last output
and the failed checks, and is not retried on resume unless ``--retry-failed``.

Output: a texts file (``data.texts=OUT``), one line per image, ``{"path", "caption",
"provenance"}``; provenance holds the model (folder, architecture, weight files), the
SHA-256 of the instruction, the generation settings, the checks and the attempts.
``OUT.summary.json`` holds the last run's tally.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass

from .vlm import Generation, VlmSpec
from .work import JsonlSink, WorkItem, collect_items, run_work, sha256_text

__all__ = ["INSTRUCTION", "TEMPLATE_SLOTS", "CaptionSpec", "add_caption_arguments", "check_caption", "run_caption"]

# CLIP-SCGI, Sec. III-A, verbatim (its grammar included).
INSTRUCTION = (
    "Describe the most obvious one people using this template for no more than 45 words: A [age] [gender] is "
    "wearing [upper clothes]. [gender] is wearing [upper clothes] and [lower clothes]. The [gender] is wearing "
    "[shoes] and carrying a [others]. The [gender] has [hair length] [and whether wear glasses]."
)
TEMPLATE_SLOTS = tuple(dict.fromkeys(re.findall(r"\[([^\]]+)\]", INSTRUCTION)))
MAX_WORDS = 45
_ECHO = ("this template", "no more than 45 words", "describe the most obvious")


def check_caption(text: str, max_words: int = MAX_WORDS) -> list[str]:
    """The names of the checks ``text`` fails ([] when it passes): ``empty``,
    ``too_long`` (more than ``max_words`` words), ``unfilled_slot`` (a ``[slot]`` or a
    stray bracket left), ``echoes_prompt`` (repeats the instruction)."""
    if not text.strip():
        return ["empty"]
    failed = []
    if len(text.split()) > max_words:
        failed.append("too_long")
    if "[" in text or "]" in text:
        failed.append("unfilled_slot")
    if any(phrase in text.lower() for phrase in _ECHO):
        failed.append("echoes_prompt")
    return failed


@dataclass(frozen=True)
class CaptionSpec:
    vlm: VlmSpec
    retries: int = 2
    max_words: int = MAX_WORDS

    def build(self):
        model = self.vlm.load()

        def process(item: WorkItem) -> dict:
            checks_failed: list[str] = []
            text = ""
            for attempt in range(self.retries + 1):
                text = model.generate(item.path, INSTRUCTION, item.key, attempt)
                failed = check_caption(text, self.max_words)
                if not failed:
                    return {"ok": True, "record": {"path": item.key, "caption": text}, "attempts": attempt + 1,
                            "retries": attempt, "checks_failed": checks_failed}
                checks_failed += failed
            return {"ok": False, "failure": {"path": item.key, "output": text, "checks_failed": checks_failed,
                                             "attempts": self.retries + 1},
                    "attempts": self.retries + 1, "retries": self.retries, "checks_failed": checks_failed}

        return process


def add_common_arguments(parser: argparse.ArgumentParser, split_default: str) -> None:
    """The options every annotation command shares."""
    parser.add_argument("--dataset", required=True, help="registered dataset name (e.g. market1501, prcc, cuhk_pedes, synthetic_cc)")
    parser.add_argument("--root", default=None, help="folder holding the dataset (as for train's data.root)")
    parser.add_argument("--split", default=split_default,
                        help="image splits to annotate: comma-separated names or 'all' (default %(default)s)")
    parser.add_argument("--workers", type=int, default=1,
                        help="Ray workers, each loading the model once (1 = in this process, no Ray)")
    parser.add_argument("--chunk-size", type=int, default=8, help="images per Ray task (default %(default)s)")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs Ray reserves per worker")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")


def add_vlm_arguments(parser: argparse.ArgumentParser, max_words: int) -> None:
    parser.add_argument("--model", required=True, help="local vision-language model folder (image-text-to-text)")
    parser.add_argument("--out", required=True, help="texts file to write (JSON lines); resumed when it exists")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--max-words", type=int, default=max_words, help="longest accepted output (words)")
    parser.add_argument("--retries", type=int, default=2, help="retries of an output that fails a check")
    parser.add_argument("--retry-failed", action="store_true", help="redo the images OUT.failed.jsonl lists")
    parser.add_argument("--prompt-format", default=None,
                        help="prompt around the instruction when the model has no chat template, with {prompt} "
                             "(e.g. 'USER: <image>\\n{prompt} ASSISTANT:')")


def add_caption_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, "train")
    add_vlm_arguments(parser, MAX_WORDS)


def check_vlm_arguments(args: argparse.Namespace) -> None:
    for name in ("max_new_tokens", "max_words"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.retries < 0:
        raise ValueError(f"--retries must be 0 or more, got {args.retries}")
    if args.prompt_format is not None and "{prompt}" not in args.prompt_format:
        raise ValueError(f"--prompt-format {args.prompt_format!r} has no {{prompt}} placeholder")


def vlm_spec(args: argparse.Namespace) -> VlmSpec:
    from .vlm import check_model_dir

    return VlmSpec(check_model_dir(args.model), Generation(max_new_tokens=args.max_new_tokens),
                   args.prompt_format, args.device)


def annotate_to_jsonl(command: str, dataset_name: str, items, spec, provenance: dict,
                      args: argparse.Namespace) -> int:
    """Run ``spec`` over ``items`` into ``args.out`` (resuming it), write ``<out>.summary.json``
    (this run's tally and the provenance) and print the tally; what `caption` and `describe` share."""
    sink = JsonlSink(args.out, provenance, retry_failed=args.retry_failed)
    tally = run_work(items, spec, sink, workers=args.workers, chunk_size=args.chunk_size, desc=command,
                     gpus_per_worker=args.gpus_per_worker)
    with open(sink.out + ".summary.json", "w", encoding="utf-8") as fh:
        json.dump({"last_run": tally.as_dict(), "provenance": provenance}, fh, indent=1)
        fh.write("\n")
    print(f"{command} {dataset_name} [{args.split}] -> {sink.out}: {tally.line()}")
    return 0


def run_caption(args: argparse.Namespace) -> int:
    from ..datasets import build_dataset
    from .vlm import model_provenance

    check_vlm_arguments(args)
    spec = CaptionSpec(vlm_spec(args), retries=args.retries, max_words=args.max_words)
    dataset = build_dataset(args.dataset, args.root)
    items = collect_items(dataset, args.split)
    provenance = {"command": "reidbench data caption", "model": model_provenance(spec.vlm.model),
                  "prompt_sha256": sha256_text(INSTRUCTION), **spec.vlm.record(),
                  "checks": {"max_words": spec.max_words, "slots": list(TEMPLATE_SLOTS)}, "retries": spec.retries}
    return annotate_to_jsonl("caption", dataset.name, items, spec, provenance, args)
