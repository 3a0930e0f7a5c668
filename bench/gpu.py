"""Everything that needs a CUDA GPU, in one run: prints one JSON line (no assertions).

    python bench/gpu.py [--skip restore train caption] [--restore-steps 50] [--train-steps 5]
    python bench/gpu.py --device cpu --tiny     # the same code at toy sizes: checks it runs, measures nothing

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

Without CUDA it prints ``{"bench": "gpu", "skipped": ...}`` and exits 0. Both lines carry
``restore_settings``, the sampler settings and sizes the restore part measures. The CPU benches stay
in bench/restore.py, bench/train.py and bench/caption.py; tests/bench/test_gpu.py runs this script.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from model.flops import count_flops, mfu, peak_bf16_flops  # noqa: E402


# ---------------------------------------------------------------------------------------------
# restore

def restore_config(dtype: str, steps: int, size: int = 1024, device: str = "cuda"):
    """The RestoreConfig of the restore bench: released sampler settings, one image of size x size."""
    from model.sampler import SamplerConfig
    from stages.restore import RestoreConfig

    return RestoreConfig(model="-", device=device, dtype=dtype, min_size=size, progress=False,
                         sampler=SamplerConfig(preset="released", num_steps=steps))


RESTORE_DTYPES = ("bfloat16", "float16")


def restore_settings(steps: int, size: int = 1024) -> dict:
    """What the restore part runs: the sampler's resolved settings, dtypes, and the latent against one tile."""
    from model.restoration import working_size

    cfg = restore_config(RESTORE_DTYPES[0], steps, size)
    _, (w, h) = working_size(size, size, 1, cfg.min_size)
    return {"size": size, "dtypes": list(RESTORE_DTYPES), "min_size": cfg.min_size, "latent": [w // 8, h // 8],
            "tile_size": cfg.tiling.tile_size, "tiled_vae": cfg.tiling.tiled_vae,
            "sampler": {k: getattr(cfg.sampler, k)
                        for k in ("preset", "num_steps", "sigma_snap", "tau_r", "s_noise", "size_conditioning")}}


def bench_restore(steps: int, size: int = 1024, preset: str = "sdxl", device: str = "cuda",
                  dtypes: tuple[str, ...] = RESTORE_DTYPES) -> dict:
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

def write_llava_7b(folder: Path, device: str = "cuda", dtype: torch.dtype = torch.bfloat16,
                   narrow: bool = False) -> Path:
    """A random LLaVA-1.5-7B-shaped checkpoint: the offline tokenizer of model/tiny_llava.py, a
    336 px processor, random weights built on ``device`` in ``dtype``; loads like a hub folder."""
    from transformers import CLIPImageProcessor, GenerationConfig, LlavaForConditionalGeneration, LlavaProcessor

    from model.tiny_llava import CHAT_TEMPLATE, build_tokenizer, llava_7b_config

    tokenizer = build_tokenizer()
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    config = llava_7b_config(image_token_index=image_token, narrow=narrow)
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


def bench_caption(batch_sizes: tuple[int, ...] = (1, 16), tokens: int = 32, device: str = "cuda",
                  narrow: bool = False) -> dict:
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_caption", ROOT / "bench" / "caption.py")
    caption = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(caption)
    args = SimpleNamespace(device=device, dtype="auto", mode="sample", tokens=tokens)
    with tempfile.TemporaryDirectory(prefix="llava-7b-random-") as tmp:
        t0 = time.perf_counter()
        folder = write_llava_7b(Path(tmp), device=device, narrow=narrow)
        if device == "cuda":
            torch.cuda.empty_cache()
        build_s = time.perf_counter() - t0
        runs = [caption.run(str(folder), b, caption.photo_bytes(max(8, 2 * b)), args) for b in batch_sizes]
    return {"model": f"llava-1.5-7b-shaped{' (narrow)' if narrow else ''} (random)", "new_tokens_per_caption": tokens,
            "build_and_save_s": round(build_s, 1), "runs": runs}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip", nargs="*", default=[], choices=["restore", "train", "caption"])
    ap.add_argument("--restore-steps", type=int, default=50)
    ap.add_argument("--train-steps", type=int, default=5)
    ap.add_argument("--caption-tokens", type=int, default=32)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: only with --tiny")
    ap.add_argument("--tiny", action="store_true",
                    help="toy sizes (the tiny preset at 64 px, 2 restore steps, 1 train step, a narrow LLaVA, "
                         "4 tokens at batch 1 and 2): checks that every part runs, measures nothing")
    args = ap.parse_args(argv)
    if args.device == "cpu" and not args.tiny:
        ap.error("--device cpu: only with --tiny (the full sizes need a GPU's memory and speed)")
    settings = {} if args.tiny else {"restore_settings": restore_settings(args.restore_steps)}
    if args.device == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"bench": "gpu", "skipped": "no CUDA device: this benchmark needs a GPU", **settings}))
        return 0
    cuda = args.device == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    result: dict = {"bench": "gpu", "device": torch.cuda.get_device_name(0) if cuda else "cpu",
                    "torch": torch.__version__, "tiny": args.tiny, **settings}
    t0 = time.perf_counter()
    dev = args.device
    parts = (("restore", lambda: bench_restore(2, size=64, preset="tiny", device=dev, dtypes=("float32",))),
             ("train", lambda: bench_train(preset="tiny", crop=64, steps=1, device=dev)),
             ("caption", lambda: bench_caption(batch_sizes=(1, 2), tokens=4, device=dev, narrow=True))) if args.tiny \
        else (("restore", lambda: bench_restore(args.restore_steps)),
              ("train", lambda: bench_train(steps=args.train_steps)),
              ("caption", lambda: bench_caption(tokens=args.caption_tokens)))
    for name, fn in parts:
        if name in args.skip:
            continue
        t = time.perf_counter()
        try:
            result[name] = fn()
        except Exception as e:  # noqa: BLE001 - one failing part still reports the others
            result[name] = {"error": f"{type(e).__name__}: {e}"}
        result[name]["wall_s"] = round(time.perf_counter() - t, 1)
        if cuda:
            torch.cuda.empty_cache()
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
