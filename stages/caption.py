"""Caption stage: LLaVA captions (or the crawled alt text) into the `captions` table.

SUPIR's prior is text-conditioned and its training images are captioned by LLaVA (paper section
3.2; the official release asks LLaVA-1.5 13B to "Describe this image and its style in a very
detailed manner." with temperature 0.2, top_p 0.7, max_new_tokens 512). This module is the work
of that stage as plain callables that import no Ray:

    cap = Captioner(CaptionConfig(model="llava-hf/llava-1.5-7b-hf"))   # or a local folder
    out = cap({"image_id": ids, "bytes": encoded_images})              # Ray Data numpy batch
    # out has the CAPTIONS columns (catalog.schemas), one row per input row

pipelines/ wraps it in ``map_batches(Captioner, fn_constructor_kwargs={"cfg": cfg},
batch_size=cfg.batch_size, **actor_pool(cfg.resources))``.

Every input row comes out with a status: ok, decode_error (bytes that Pillow cannot read),
empty_caption (the model produced only whitespace or special tokens), error (generation failed
even for the row alone; the message is in `error`), no_alt_text (alt-text captioner, nothing
crawled).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import transformers
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, LogitsProcessor
from transformers.generation import TemperatureLogitsWarper, TopPLogitsWarper

from catalog import codec
from catalog.batches import numpy_batch
from catalog.config import check
from catalog.resources import Resources, resource_keys
from catalog.seeds import seed_of
from model.devices import TORCH_DTYPES, resolve_device, resolve_dtype

SUPIR_PROMPT = "Describe this image and its style in a very detailed manner."
# llava-1.5's conversation format, for processors saved without a chat template
FALLBACK_TEMPLATE = "USER: <image>\n{prompt} ASSISTANT:"
# from_pretrained's dtype argument: `dtype` in transformers 5, `torch_dtype` in 4.x
DTYPE_KWARG = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")


@dataclass
class CaptionConfig:
    """The `caption:` section of a run config."""

    # llava: caption with a LLaVA-family model; alt-text: keep the crawled alt text.
    captioner: Literal["llava", "alt-text"] = "llava"
    # A local folder saved with save_pretrained, or a hub id (needs hub access or a warm cache).
    model: str = "llava-hf/llava-1.5-7b-hf"
    # Weights dtype: auto (bfloat16 on a GPU that has it, else float16; float32 on CPU), float32,
    # float16 or bfloat16.
    dtype: str = "auto"
    # auto (cuda when available), cpu, cuda or cuda:N.
    device: str = "auto"
    # null lets transformers choose (sdpa); or eager, sdpa, flash_attention_2 ...
    attn_implementation: str | None = None
    # The instruction given with each image (SUPIR's by default).
    prompt: str = SUPIR_PROMPT
    # Sampling temperature (sample mode), SUPIR's 0.2.
    temperature: float = 0.2
    # Nucleus sampling mass (sample mode), SUPIR's 0.7.
    top_p: float = 0.7
    # Longest caption in tokens, SUPIR's 512.
    max_new_tokens: int = 512
    # Shortest caption in tokens (EOS is suppressed before it); 0 for none. Benchmarks set it to
    # max_new_tokens so every run generates the same number of tokens.
    min_new_tokens: int = 0
    # sample: temperature + top_p with a generator seeded by (seed, image_id), so a rerun gives the
    # same caption; greedy: argmax decoding.
    mode: Literal["sample", "greedy"] = "sample"
    # Seed of the per-image sampling generators.
    seed: int = 0
    # Images per generate call (a Ray batch is one call).
    batch_size: int = 8
    # Short side the image is shrunk to before the processor; null: the model's input side (the image
    # processor's crop size, 336 for llava-1.5).
    image_side: int | None = None
    # Captioner actors (one model each) and their GPUs (0 on CPU; 0.5 packs two on one GPU); the
    # alt-text captioner asks for no GPU.
    resources: Resources = field(default_factory=lambda: Resources(gpus_per_worker=1.0))

    RENAMED: ClassVar[dict[str, str]] = resource_keys(workers="actors", gpus="num_gpus_per_actor")

    def __post_init__(self) -> None:
        check(self.captioner in ("llava", "alt-text"), "caption.captioner", self.captioner,
              "llava or alt-text")
        check(self.mode in ("sample", "greedy"), "caption.mode", self.mode, "sample or greedy")
        check(bool(self.model.strip()), "caption.model", self.model, "a local folder or a hub id")
        check(self.dtype == "auto" or self.dtype in TORCH_DTYPES, "caption.dtype", self.dtype,
              "auto, float32, float16 or bfloat16")
        dev = self.device
        check(dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit()),
              "caption.device", dev, "auto, cpu, cuda or cuda:N")
        check(self.attn_implementation is None or self.attn_implementation in ATTN_IMPLEMENTATIONS,
              "caption.attn_implementation", self.attn_implementation,
              "null or one of " + ", ".join(ATTN_IMPLEMENTATIONS))
        check(bool(self.prompt.strip()), "caption.prompt", self.prompt, "a non-empty instruction")
        check(self.temperature > 0, "caption.temperature", self.temperature, "a number > 0")
        check(0 < self.top_p <= 1, "caption.top_p", self.top_p, "a number in (0, 1]")
        check(self.max_new_tokens >= 1, "caption.max_new_tokens", self.max_new_tokens, "an integer >= 1")
        check(0 <= self.min_new_tokens <= self.max_new_tokens, "caption.min_new_tokens",
              self.min_new_tokens, f"an integer in [0, max_new_tokens={self.max_new_tokens}]")
        check(self.batch_size >= 1, "caption.batch_size", self.batch_size, "an integer >= 1")
        check(self.image_side is None or self.image_side >= 8, "caption.image_side", self.image_side,
              "null or an integer >= 8")
        self.resources.check("caption")

    def generation_params(self) -> dict[str, Any]:
        """What goes into the `params` column: everything that changes a caption."""
        keys = ["mode", "max_new_tokens", "min_new_tokens", "image_side"]
        if self.mode == "sample":
            keys += ["temperature", "top_p", "seed"]
        return {k: getattr(self, k) for k in keys}


def decode_image(data: bytes, side: int) -> Image.Image:
    """Encoded bytes -> RGB image whose short side is ``side`` (never upscaled).

    JPEGs are decoded at a reduced DCT scale first (Image.draft), so a 24 MP photo costs about
    as much as a thumbnail. Decoded by catalog/codec.py like every stage (EXIF orientation,
    16-bit, alpha), so the caption describes the pixels that the other stages see.
    """
    img = codec.decode_rgb(data, draft=(side, side))  # draft: largest 1/2^k JPEG scale that stays >= side
    w, h = img.size
    if min(w, h) > side:
        scale = side / min(w, h)
        img = img.resize((max(side, round(w * scale)), max(side, round(h * scale))), Image.BICUBIC)
    return img


def row_seed(seed: int, image_id: str) -> int:
    """A 63-bit seed from (run seed, content key): a caption does not depend on its batch."""
    return seed_of(seed, image_id)


class SeededSampler(LogitsProcessor):
    """Draws the next token of each row from its own torch.Generator.

    transformers samples with the global RNG; this processor runs last (after temperature and
    top_p), samples per row, and leaves only the drawn token finite, so generate's greedy step
    picks it. Reruns and reshuffled batches give the same draws.
    """

    def __init__(self, generators: list[torch.Generator]):
        self.generators = generators

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        probs = scores.float().softmax(dim=-1)  # (B, V)
        picks = torch.cat([torch.multinomial(p, 1, generator=g)
                           for p, g in zip(probs, self.generators, strict=True)])  # (B,)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, picks[:, None], 0.0)  # (B, V)


def _column(batch: dict[str, np.ndarray], name: str, n: int) -> list[Any]:
    return list(batch[name]) if name in batch else [None] * n


def _rows(n: int, image_ids: list[str], **const: Any) -> dict[str, list[Any]]:
    """Column lists for n output rows, status error until set."""
    out = {"image_id": [str(i) for i in image_ids]}
    out.update({k: [v] * n for k, v in const.items()})
    out.update(caption=[None] * n, status=["error"] * n, error=[None] * n, seconds=[0.0] * n,
               new_tokens=[0] * n)
    return out


def _to_numpy(cols: dict[str, list[Any]]) -> dict[str, np.ndarray]:
    return numpy_batch(cols, {"seconds": np.float64, "new_tokens": np.int64})


class AltTextCaptioner:
    """``captioner: alt-text``: the crawled alt text is the caption (no model)."""

    def __init__(self, cfg: CaptionConfig):
        self.cfg = cfg

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = list(batch["image_id"])
        n = len(ids)
        cols = _rows(n, ids, captioner="alt-text", prompt=None, params=json.dumps({}))
        for i, alt in enumerate(_column(batch, "alt_text", n)):
            text = alt.strip() if isinstance(alt, str) else ""
            cols["caption"][i] = text or None
            cols["status"][i] = "ok" if text else "no_alt_text"
        return _to_numpy(cols)


class Captioner:
    """``captioner: llava``: batched generation with a LLaVA-family model (Ray Data callable).

    Loads the processor and model once (``__init__``); ``__call__`` takes a numpy batch with
    columns image_id, bytes (encoded images, object array) and returns the CAPTIONS columns.
    """

    def __init__(self, cfg: CaptionConfig):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        self.processor = AutoProcessor.from_pretrained(cfg.model)
        tok = self.processor.tokenizer
        tok.padding_side = "left"  # decoder-only generation continues from the right end
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        kwargs = {DTYPE_KWARG: self.dtype, "device_map": str(self.device)}
        if cfg.attn_implementation is not None:
            kwargs["attn_implementation"] = cfg.attn_implementation
        self.model = AutoModelForImageTextToText.from_pretrained(cfg.model, **kwargs).eval()
        self.side = cfg.image_side or self._model_side()
        self.text = self._prompt_text()
        self.params = json.dumps({**cfg.generation_params(), "image_side": self.side,
                                  "dtype": str(self.dtype).removeprefix("torch.")}, sort_keys=True)

    def _model_side(self) -> int:
        """The side of the square the vision tower sees (crop size, else the resize size)."""
        ip = self.processor.image_processor
        for size in (getattr(ip, "crop_size", None), getattr(ip, "size", None)):
            size = dict(size or {})
            for key in ("height", "shortest_edge", "width"):
                if size.get(key):
                    return int(size[key])
        return int(self.model.config.vision_config.image_size)

    def _prompt_text(self) -> str:
        if getattr(self.processor, "chat_template", None):
            conversation = [{"role": "user", "content": [{"type": "image"},
                                                         {"type": "text", "text": self.cfg.prompt}]}]
            return self.processor.apply_chat_template(conversation, add_generation_prompt=True)
        return FALLBACK_TEMPLATE.format(prompt=self.cfg.prompt)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = list(batch["image_id"])
        n = len(ids)
        cols = _rows(n, ids, captioner=self.cfg.model, prompt=self.cfg.prompt, params=self.params)
        ready: list[tuple[int, Image.Image]] = []
        for i, data in enumerate(_column(batch, "bytes", n)):
            t0 = time.perf_counter()
            try:
                if data is None:
                    raise ValueError("no image bytes")
                ready.append((i, decode_image(bytes(data), self.side)))
            except codec.DecodeError as e:
                cols["status"][i], cols["error"][i] = e.status, str(e)
            except Exception as e:  # noqa: BLE001 - truncated, bomb, odd modes: a row status
                cols["status"][i], cols["error"][i] = "decode_error", f"{type(e).__name__}: {e}"
            cols["seconds"][i] = time.perf_counter() - t0
        for start in range(0, len(ready), self.cfg.batch_size):
            self._caption(ready[start:start + self.cfg.batch_size], [str(x) for x in ids], cols)
        return _to_numpy(cols)

    def _caption(self, chunk: list[tuple[int, Image.Image]], ids: list[str], cols: dict) -> None:
        """Generate for one chunk; on failure (say, out of memory) retry its halves."""
        t0 = time.perf_counter()
        try:
            texts, counts = self.generate([img for _, img in chunk], [ids[i] for i, _ in chunk])
        except Exception as e:  # noqa: BLE001 - recorded per row, never silently dropped
            if len(chunk) > 1:
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                half = len(chunk) // 2
                self._caption(chunk[:half], ids, cols)
                self._caption(chunk[half:], ids, cols)
                return
            i = chunk[0][0]
            cols["status"][i], cols["error"][i] = "error", f"{type(e).__name__}: {e}"
            return
        per_row = (time.perf_counter() - t0) / len(chunk)  # generate time, shared evenly
        for (i, _), text, count in zip(chunk, texts, counts, strict=True):
            cols["caption"][i] = text or None
            cols["status"][i] = "ok" if text else "empty_caption"
            cols["new_tokens"][i] = count
            cols["seconds"][i] += per_row

    @torch.inference_mode()
    def generate(self, images: list[Image.Image], image_ids: list[str]) -> tuple[list[str], list[int]]:
        """Captions and generated-token counts (EOS excluded) for decoded images."""
        cfg = self.cfg
        inputs = self.processor(images=images, text=[self.text] * len(images), padding=True,
                                return_tensors="pt").to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        # sampling, when asked, happens in SeededSampler; generate itself stays greedy
        gen = {"max_new_tokens": cfg.max_new_tokens, "min_new_tokens": cfg.min_new_tokens or None,
               "do_sample": False, "num_beams": 1, "temperature": None, "top_p": None, "top_k": None,
               "pad_token_id": self.processor.tokenizer.pad_token_id}
        processors = []
        if cfg.mode == "sample":
            generators = [torch.Generator(self.device).manual_seed(row_seed(cfg.seed, i)) for i in image_ids]
            processors = [TemperatureLogitsWarper(cfg.temperature), TopPLogitsWarper(cfg.top_p),
                          SeededSampler(generators)]
        out = self.model.generate(**inputs, **gen, logits_processor=processors)
        new = out[:, inputs["input_ids"].shape[1]:]  # (B, T): only the generated tokens
        texts = [t.strip() for t in self.processor.batch_decode(new, skip_special_tokens=True)]
        return texts, self._count(new)

    def _count(self, new: torch.Tensor) -> list[int]:
        """Tokens before the first EOS in each row (rows that stop early are padded)."""
        eos = self.model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if not eos:
            return [new.shape[1]] * new.shape[0]
        done = torch.isin(new, torch.tensor(eos, device=new.device))  # (B, T)
        first = done.int().argmax(1)  # (B,) index of the first EOS, 0 when there is none
        found = done.any(1).tolist()
        return [int(f) if d else new.shape[1] for f, d in zip(first.tolist(), found, strict=True)]


def make_captioner(cfg: CaptionConfig) -> Captioner | AltTextCaptioner:
    """The callable for ``cfg.captioner``."""
    return AltTextCaptioner(cfg) if cfg.captioner == "alt-text" else Captioner(cfg)


def captioner_class(cfg: CaptionConfig) -> type:
    """The class Ray should instantiate per actor (``map_batches(captioner_class(cfg), ...)``)."""
    return AltTextCaptioner if cfg.captioner == "alt-text" else Captioner


__all__ = [
    "SUPIR_PROMPT",
    "AltTextCaptioner",
    "CaptionConfig",
    "Captioner",
    "SeededSampler",
    "captioner_class",
    "decode_image",
    "make_captioner",
    "row_seed",
]
