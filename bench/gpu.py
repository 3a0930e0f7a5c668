"""Everything that needs a CUDA GPU, in one run: prints one JSON line (no assertions).

    python bench/gpu.py [--skip restore train caption] [--restore-steps 50] [--train-steps 5]

With random weights (nothing downloaded), sized to finish in under 8 minutes on one H100-class GPU:

- ``restore``: the SDXL-size model (UNet 2567.5M, untrimmed adaptor 1243.4M as the released
  weights, connectors 54.8M, E_dr 34.2M) restoring one 1024x1024 image with the released sampler
  settings, 50 steps, CFG on (both prompts in one batch of 2), in bfloat16 and in float16 (the
  VAE then runs in float32, as SDXL's force_upcast asks): seconds per step (the sampler loop),
  seconds per image (VAE passes included), peak memory.
- ``train``: one stage-2 step (stages/train.py's ``training_step``) of the SDXL-size model at
  512x512, bf16 autocast, gradient checkpointing, AdamW on adaptor + connectors: steps/s, peak
  memory, and MFU = model FLOPs per step (counted by torch's FlopCounterMode on one step
  without recomputation) / seconds per step / the GPU's dense bf16 peak.
- ``caption``: a LLaVA-1.5-7B-shaped model (CLIP ViT-L/14-336 + Llama-7B, random weights, saved
  and loaded through the same path as a real checkpoint) captioning photos with a fixed caption
  length: images/s at batch 1 and 16 (bench/caption.py's ``run``).

Without CUDA it prints ``{"bench": "gpu", "skipped": ...}`` and exits 0. The CPU benches stay in
bench/restore.py, bench/train.py and bench/caption.py.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

# Dense bf16 tensor-core peaks (FLOP/s, no sparsity) from the vendors' data sheets, by name fragment.
PEAK_BF16 = {"H200": 989.4e12, "H100 PCIe": 756.0e12, "H100": 989.4e12, "GH200": 989.4e12, "A100": 312.0e12,
             "L40S": 362.1e12, "L4": 121.0e12, "A10G": 70.0e12, "RTX 4090": 165.2e12, "B200": 2250.0e12}


def peak_bf16_flops(device_name: str) -> Optional[float]:
    """The GPU's dense bf16 peak, matched by the longest name fragment; None when unknown."""
    hits = [k for k in PEAK_BF16 if k.lower() in device_name.lower()]
    return PEAK_BF16[max(hits, key=len)] if hits else None


def mfu(flops_per_step: float, seconds_per_step: float, peak: Optional[float]) -> Optional[float]:
    """Model FLOPs utilisation: achieved FLOP/s over the peak (None without a known peak)."""
    if not peak or seconds_per_step <= 0:
        return None
    return flops_per_step / seconds_per_step / peak


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` (matmuls, convolutions, attention; forward and backward), by
    torch.utils.flop_counter.FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


# ---------------------------------------------------------------------------------------------
# restore

def restore_config(dtype: str, steps: int, size: int = 1024, device: str = "cuda"):
    """The RestoreConfig of the restore bench: released sampler settings, one image of size x size."""
    from model.sampler import SamplerConfig
    from stages.restore import RestoreConfig

    return RestoreConfig(model="-", device=device, dtype=dtype, min_size=size, progress=False,
                         sampler=SamplerConfig(preset="released", num_steps=steps))


def bench_restore(steps: int, size: int = 1024, preset: str = "sdxl", device: str = "cuda",
                  dtypes: tuple[str, ...] = ("bfloat16", "float16")) -> dict:
    from bench.restore import test_image
    from model.config import ModelConfig
    from model.supir import build_model, parameter_counts
    from stages.restore import Restorer

    t0 = time.perf_counter()
    model = build_model(ModelConfig(preset=preset, dtype="bfloat16" if device == "cuda" else "float32"), device=device)
    out: dict = {"build_s": round(time.perf_counter() - t0, 1),
                 "parameters_m": {k: round(v / 1e6, 1) for k, v in parameter_counts(model).items()}}
    img = test_image(size)
    for dtype in dtypes:
        Restorer(restore_config(dtype, 2, size, device), model=model).restore(img, "warmup")
        r = Restorer(restore_config(dtype, steps, size, device), model=model)
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        r.restore(img, "bench")
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        out[dtype] = {"size": f"{size}x{size}", "steps": steps, "seconds_per_image": round(seconds, 3),
                      "seconds_per_step": round(r.last_info["sampling_seconds"] / steps, 4),
                      "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
                      if device == "cuda" else None}
    return out


# ---------------------------------------------------------------------------------------------
# train

def bench_train(preset: str = "sdxl_trimmed", crop: int = 512, batch_size: int = 1, steps: int = 5,
                device: str = "cuda") -> dict:
    """Steps/s, peak memory and MFU of the stage-2 step (SDXL size with the paper's trimmed
    adaptor by default: training from scratch; ``preset="sdxl"`` for the released depth)."""
    from model.config import ModelConfig
    from model.supir import build_model, parameter_counts
    from stages.train import StageObjective, TrainConfig, training_step
    from stages.train_data import Batch

    dev = torch.device(device)
    cfg = TrainConfig(stage="adaptor", crop_size=crop, batch_size=batch_size, gradient_checkpointing=True,
                      mixed_precision="bf16", lr=1e-5, prompt_dropout=0.1)
    mcfg = ModelConfig(preset=preset, dtype="bfloat16" if dev.type == "cuda" else "float32",
                       gradient_checkpointing=True)
    t0 = time.time()
    model = build_model(mcfg, device=dev)
    build_s = time.time() - t0
    for name, module in model.trainable_modules().items():
        module.requires_grad_(name in ("adaptor", "connectors"))
    params = [p for n in ("adaptor", "connectors") for p in model.trainable_modules()[n].parameters()]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr)
    objective = StageObjective(model, "adaptor")
    g = torch.Generator("cpu").manual_seed(0)
    batch = Batch(torch.rand(batch_size, 3, crop, crop, generator=g) * 2 - 1,
                  torch.rand(batch_size, 3, crop, crop, generator=g) * 2 - 1,
                  ["a photo of a house by a lake"] * batch_size, ["p"] * batch_size, ["degraded"] * batch_size).to(dev)

    def step(i: int):
        loss, _ = training_step(objective, model, optimizer, params, cfg, batch, 0, i, dev, True)
        return loss

    # model FLOPs: one step without recomputation (checkpointing re-runs forwards: hardware FLOPs)
    model.gradient_checkpointing = False
    model.adaptor.disable_gradient_checkpointing()
    flops = count_flops(lambda: step(0))
    model.enable_gradient_checkpointing()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for i in range(steps + 2):  # two warm-up steps
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t = time.perf_counter()
        loss = step(i).item()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - t)
    seconds = statistics.median(times[2:])
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    peak = peak_bf16_flops(name) if dev.type == "cuda" else None
    return {"preset": preset, "crop": crop, "batch_size": batch_size, "gradient_checkpointing": True,
            "steps_timed": steps, "steps_per_s": round(1 / seconds, 4), "seconds_per_step": round(seconds, 4),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated(dev) / 2 ** 30, 2) if dev.type == "cuda" else None,
            "model_tflops_per_step": round(flops / 1e12, 3), "peak_bf16_tflops": peak and round(peak / 1e12, 1),
            "mfu": mfu(flops, seconds, peak), "loss": loss, "build_s": round(build_s, 1),
            "trainable_params_m": round(sum(p.numel() for p in params) / 1e6, 1),
            "unet_params_m": round(parameter_counts(model)["unet"] / 1e6, 1)}


# ---------------------------------------------------------------------------------------------
# caption

def llava_7b_config(vocab_size: int = 32064, image_token_index: int = 32000):
    """LlavaConfig of llava-hf/llava-1.5-7b-hf's shape: CLIP ViT-L/14 at 336 px (24 layers, 1024
    wide), a 2-layer GELU projector, Llama-7B (32 layers, 4096 wide, 11008 MLP, 32 heads)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
    text = LlamaConfig(vocab_size=vocab_size, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                       rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_token_index,
                       image_seq_length=576, vision_feature_layer=-2, vision_feature_select_strategy="default",
                       projector_hidden_act="gelu")


def write_llava_7b(folder: Path, device: str = "cuda", dtype: torch.dtype = torch.bfloat16) -> Path:
    """A random LLaVA-1.5-7B-shaped checkpoint: the offline tokenizer of model/tiny_llava.py, a
    336 px processor, random weights built on ``device`` in ``dtype``; loads like a hub folder."""
    from transformers import CLIPImageProcessor, GenerationConfig, LlavaForConditionalGeneration, LlavaProcessor

    from model.tiny_llava import CHAT_TEMPLATE, build_tokenizer

    tokenizer = build_tokenizer()
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    config = llava_7b_config(image_token_index=image_token)
    config.text_config.update({"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                               "pad_token_id": tokenizer.pad_token_id})
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            torch.manual_seed(0)
            model = LlavaForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(old)
    # random weights may pick any token: never the placeholder, padding, or an id the small offline
    # tokenizer cannot decode (the 7B vocabulary is 32064 wide); min_new_tokens fixes the length
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        suppress_tokens=[image_token, tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.unk_token_id,
                         *range(len(tokenizer), config.text_config.vocab_size)])
    model.save_pretrained(folder)
    del model
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}),
        tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(folder)
    return folder


def bench_caption(batch_sizes: tuple[int, ...] = (1, 16), tokens: int = 32, device: str = "cuda") -> dict:
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_caption", ROOT / "bench" / "caption.py")
    caption = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(caption)
    args = SimpleNamespace(device=device, dtype="auto", mode="sample", tokens=tokens)
    with tempfile.TemporaryDirectory(prefix="llava-7b-random-") as tmp:
        t0 = time.perf_counter()
        folder = write_llava_7b(Path(tmp), device=device)
        if device == "cuda":
            torch.cuda.empty_cache()
        build_s = time.perf_counter() - t0
        runs = [caption.run(str(folder), b, caption.photo_bytes(max(8, 2 * b)), args) for b in batch_sizes]
    return {"model": "llava-1.5-7b-shaped (random)", "new_tokens_per_caption": tokens,
            "build_and_save_s": round(build_s, 1), "runs": runs}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip", nargs="*", default=[], choices=["restore", "train", "caption"])
    ap.add_argument("--restore-steps", type=int, default=50)
    ap.add_argument("--train-steps", type=int, default=5)
    ap.add_argument("--caption-tokens", type=int, default=32)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print(json.dumps({"bench": "gpu", "skipped": "no CUDA device: this benchmark needs a GPU"}))
        return 0
    torch.backends.cuda.matmul.allow_tf32 = True
    result: dict = {"bench": "gpu", "device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    t0 = time.perf_counter()
    for name, fn in (("restore", lambda: bench_restore(args.restore_steps)),
                     ("train", lambda: bench_train(steps=args.train_steps)),
                     ("caption", lambda: bench_caption(tokens=args.caption_tokens))):
        if name in args.skip:
            continue
        t = time.perf_counter()
        try:
            result[name] = fn()
        except Exception as e:  # noqa: BLE001 - one failing part still reports the others
            result[name] = {"error": f"{type(e).__name__}: {e}"}
        result[name]["wall_s"] = round(time.perf_counter() - t, 1)
        torch.cuda.empty_cache()
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
