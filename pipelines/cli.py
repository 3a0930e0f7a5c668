"""The command line every pipeline entry point shares: fast ``--help``, ``--print-config``, ``--plan``.

Imports only the standard library and PyYAML at module level, so ``--help`` answers in well under
a second; the config classes (which live beside the stages that read them, and import torch)
load only once a command needs them.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Sequence

from pipelines.dag import STAGE_TABLE

ROOT = Path(__file__).resolve().parents[1]
# the stages that exist, in DAG order (pipelines/dag.py)
STAGES = tuple(s.name for s in STAGE_TABLE)
# the run config's sections: what each holds (every key: --print-config)
SECTIONS = {
    "lake": "lake root: a local folder or a pyarrow filesystem URI (s3://bucket/prefix)",
    "stages": "which stages run, in DAG order",
    "tracking": "MLflow: uri, experiment, run_name, enabled",
    "ray": "address, num_cpus, progress_bars (a stage's own Ray resources: <section>.resources)",
    "crawl": "sources, download threads, timeouts, retries, byte and pixel caps, User-Agent, opt-outs",
    "filter": "min_side, max_aspect, sharpness, pyiqa gates, near-duplicate distance",
    "caption": "captioner (llava | alt-text), model, prompt, decoding, resources (workers, GPUs)",
    "degrade": "Real-ESRGAN / BSRGAN degradation parameters, gt_size, scale, variants",
    "model": "preset (tiny | sdxl), prior (folder, file, hub id or 'train'), adaptor depth",
    "prior_train": "stage 0 (tiny prior only): VAE and UNet steps",
    "negatives": "negative-quality samples of the prior (SDEdit)",
    "train": "stage 1 (encoder) and stage 2 (adaptor): steps, batch, lr, resources, registered model",
    "restore": "the model to restore with, sampler settings, tiling, resources (workers, GPUs)",
    "baselines": "bicubic and Real-ESRGAN x4plus",
    "evaluate": "pyiqa metrics, weights folder, device",
    "split": "the held-out photos no training stage sees: fraction, minimum count, seed",
    "ablations": "rows beside the trained model on held-out pairs: D(E(x_LQ)), stage 1 alone, control 0, seeds",
}
DAG = """\
  crawl -> filter -> caption ---------------------------------+
                  -> degrade -> prior (stage 0) -> negatives -> train_encoder -> train_adaptor
                                                    -> restore -> ablations -> baselines -> evaluate"""


def epilog(stages: Sequence[str] = STAGES) -> str:
    lines = ["stages (DAG order):", DAG if tuple(stages) == STAGES else "  " + " -> ".join(stages), "",
             "config sections (override any key as section.key=value; --print-config lists every key):"]
    lines += [f"  {name:12s} {what}" for name, what in SECTIONS.items()]
    return "\n".join(lines)


def parser(description: str, default_config: str | None = "configs/demo.yaml", stages: Sequence[str] = STAGES,
           plan: bool = True) -> argparse.ArgumentParser:
    """The options every entry point shares. ``default_config`` None: no file unless --config gives one
    (the built-in defaults); ``plan`` False for a command that runs no stage of the DAG."""
    ap = argparse.ArgumentParser(description=description, epilog=epilog(stages),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    default = str(ROOT / default_config) if default_config else None
    ap.add_argument("--config", "-c", default=default,
                    help="YAML run config (default: %s)" % (default or "none: the built-in defaults"))
    ap.add_argument("--print-config", action="store_true",
                    help="print the resolved config (file + overrides), every key with its value; keys that differ "
                         "from the built-in default say so; then exit")
    if plan:
        ap.add_argument("--plan", action="store_true",
                        help="print the stages that would run, each one's Ray resources and whether the lake already "
                             "holds its result; run nothing")
    ap.add_argument("overrides", nargs="*", help="key.path=value overrides (YAML values), e.g. filter.min_side=512")
    return ap


def config_text(cfg: Any) -> str:
    """YAML of a config dataclass, every key; a value that is not the field's default is marked."""
    return "\n".join(_lines(cfg, 0)) + "\n"


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def _scalar(v: Any) -> str:
    import yaml

    from catalog.config import to_dict

    return yaml.safe_dump(to_dict(v), default_flow_style=True, width=10_000).strip().removesuffix("\n...").strip()


def _lines(obj: Any, depth: int) -> list[str]:
    pad, out = "  " * depth, []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.append(f"{pad}{f.name}:")
            out += _lines(value, depth + 1)
            continue
        default = _default(f)
        note = ""
        if default is not dataclasses.MISSING and not dataclasses.is_dataclass(default) and default != value:
            note = f"  # default: {_scalar(default)}"
        out.append(f"{pad}{f.name}: {_scalar(value)}{note}")
    return out
