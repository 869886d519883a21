"""A local vision-language model behind one call: ``generate(image_path, instruction,
attempt) -> text``, shared by ``data caption`` and ``data describe``.

The model folder is read with ``AutoProcessor`` and ``AutoModelForImageTextToText``
(``local_files_only``: nothing is downloaded). The instruction is put into the
processor's chat template as one user turn holding the image and the text; a model
folder without a chat template needs ``--prompt-format`` (e.g. LLaVA-1.5's
``"USER: <image>\\n{prompt} ASSISTANT:"``).

Decoding (decisions): the first attempt is greedy (``do_sample=False, num_beams=1``),
as the issue asks. Greedy decoding is deterministic, so a retry of the same input would
repeat the same failure; retries therefore sample (temperature 0.7, top-p 0.9) with a
seed made from the image key and the attempt number, so a retried item comes out the
same on any worker. One image per ``generate`` call: batching would pad prompts, and
padding changes the logits slightly, so an item's text would depend on its neighbours.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .work import item_seed

__all__ = ["Generation", "VlmSpec", "check_model_dir", "model_provenance"]


@dataclass(frozen=True)
class Generation:
    """Generation settings; recorded in every line's provenance."""

    max_new_tokens: int = 96
    retry_temperature: float = 0.7
    retry_top_p: float = 0.9

    def kwargs(self, attempt: int) -> dict:
        if attempt == 0:
            return {"max_new_tokens": self.max_new_tokens, "do_sample": False, "num_beams": 1}
        return {"max_new_tokens": self.max_new_tokens, "do_sample": True, "num_beams": 1,
                "temperature": self.retry_temperature, "top_p": self.retry_top_p}

    def record(self) -> dict:
        return {"first": self.kwargs(0), "retries": {**self.kwargs(1), "seed": "sha256(image key, attempt)"}}


def check_model_dir(model: str, what: str = "--model") -> str:
    """The absolute model folder, or a ValueError saying what a model folder holds."""
    path = os.path.abspath(os.path.expanduser(model))
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(f"{what} {model!r}: no config.json in {path!r}; expected a local transformers model folder "
                         "(config.json, weights, processor files), e.g. one saved by save_pretrained or a "
                         "downloaded Hugging Face snapshot; nothing is downloaded at run time")
    return path


def model_provenance(path: str) -> dict:
    """What identifies the model: its folder, architectures and weight files' sizes."""
    import json

    with open(os.path.join(path, "config.json"), encoding="utf-8") as fh:
        config = json.load(fh)
    weights = sorted(f for f in os.listdir(path) if f.endswith((".safetensors", ".bin")))
    return {"path": path, "architectures": config.get("architectures"), "model_type": config.get("model_type"),
            "weights": {f: os.path.getsize(os.path.join(path, f)) for f in weights}}


def _device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


@dataclass(frozen=True)
class VlmSpec:
    """A picklable description of the model a worker loads (``load()`` in the worker)."""

    model: str
    generation: Generation = Generation()
    prompt_format: str | None = None
    device: str = "auto"

    def record(self) -> dict:
        return {"generation": self.generation.record(), "prompt_format": self.prompt_format}

    def load(self) -> "Vlm":
        return Vlm(self)


class Vlm:
    def __init__(self, spec: VlmSpec) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.spec = spec
        self.device = _device(spec.device)
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        self.processor = AutoProcessor.from_pretrained(spec.model, local_files_only=True)
        self.model = AutoModelForImageTextToText.from_pretrained(spec.model, local_files_only=True, dtype=dtype)
        self.model.to(self.device).eval()
        if spec.prompt_format is None and not getattr(self.processor, "chat_template", None):
            raise ValueError(f"--model {spec.model!r}: the processor has no chat template; give --prompt-format "
                             "with the model's prompt, e.g. 'USER: <image>\\n{prompt} ASSISTANT:' for LLaVA-1.5")

    def prompt(self, instruction: str) -> str:
        if self.spec.prompt_format is not None:
            return self.spec.prompt_format.replace("\\n", "\n").format(prompt=instruction)
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def generate(self, image_path: str, instruction: str, key: str, attempt: int) -> str:
        import torch
        from PIL import Image

        with Image.open(image_path) as im:
            image = im.convert("RGB")
        inputs = self.processor(images=image, text=self.prompt(instruction), return_tensors="pt").to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        settings = self.spec.generation.kwargs(attempt)
        generator_state = None
        if settings["do_sample"]:
            generator_state = torch.random.get_rng_state()
            torch.manual_seed(item_seed(key, attempt))
        with torch.inference_mode():
            out = self.model.generate(**inputs, **settings)
        if generator_state is not None:
            torch.random.set_rng_state(generator_state)
        new = out[0, inputs["input_ids"].shape[1]:]
        # One line per text: newlines and runs of spaces become single spaces.
        return " ".join(self.processor.decode(new, skip_special_tokens=True).split())
