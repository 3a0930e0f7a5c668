"""Weight files from a folder someone else filled: loaded as tensors only, checked against their names.

pyiqa and torchvision call ``torch.load(..., weights_only=False)`` on the files in the weights
folder, and a pickle can run any code while it loads. :func:`guarded_loads` wraps the creation of
a metric so that

- every ``torch.load`` is weights-only (``TORCH_FORCE_WEIGHTS_ONLY_LOAD``, which torch reads on
  each call and which overrides an explicit ``weights_only=False``): a file that needs more than
  tensors, containers and numbers fails to load instead of running its code;
- a file whose name carries a sha256 prefix, torch hub's convention (``alexnet-owt-7be5be79.pth``,
  ``LPIPS_v0.1_alex-df73285e.pth``), is hashed first and refused with :class:`WeightsTampered`
  when its content does not match the name.

- a TorchScript archive (``torch.jit.load``; pyiqa reads OpenAI's CLIP files and ARNIQA's regressor
  that way) is refused with :class:`TorchScriptRefused`: such an archive carries code that runs
  when it loads. Save its ``state_dict()`` once, on a machine you trust, under the same name; pyiqa
  then builds the model from the state dict.

The genuine pyiqa, torchvision and stlpips weights are plain state dicts and load unchanged.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
from pathlib import Path
from typing import Any, Iterator

# torch.hub's own rule (HASH_REGEX): the hex after the last '-' and before the extension
HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,64})\.[A-Za-z0-9]+$")
_lock = threading.Lock()
_verified: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, hashed once


class WeightsTampered(ValueError):
    """A weight file's content does not match the sha256 prefix in its name."""


class TorchScriptRefused(RuntimeError):
    """A weight file is a TorchScript archive, which carries code; only state dicts are loaded.

    A RuntimeError, as torch.jit.load's own failures are, so loaders that fall back from a JIT archive
    to a state dict (pyiqa's CLIP) still take their fallback; the fallback's torch.load refuses the
    same archive again, so the error reaches the caller."""


def _name_of(f: Any) -> str:
    return str(f) if isinstance(f, (str, os.PathLike)) else str(getattr(f, "name", "<stream>"))


def is_torchscript(f: Any) -> bool:
    """Whether ``f`` (a path or a seekable binary file) is a TorchScript zip: it holds ``constants.pkl``
    or a ``code/`` folder, which plain ``torch.save`` archives never have. The file position is kept."""
    import zipfile

    seekable = not isinstance(f, (str, os.PathLike)) and hasattr(f, "seek") and hasattr(f, "tell")
    if not isinstance(f, (str, os.PathLike)) and not seekable:
        return False
    pos = f.tell() if seekable else 0
    try:
        with zipfile.ZipFile(f) as z:
            inner = [n.split("/", 1)[-1] for n in z.namelist()]
        return any(n == "constants.pkl" or n.startswith("code/") for n in inner)
    except (zipfile.BadZipFile, OSError):
        return False
    finally:
        if seekable:
            f.seek(pos)


def refuse_torchscript(f: Any) -> TorchScriptRefused:
    return TorchScriptRefused(
        f"{_name_of(f)}: a TorchScript archive, which runs code when loaded; only state dicts are loaded "
        "from the weights folder. On a machine you trust: torch.save(torch.jit.load(path).state_dict(), path)")


def sha256_of(path: str | os.PathLike) -> str:
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    with _lock:
        if key in _verified:
            return _verified[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    with _lock:
        _verified[key] = h.hexdigest()
    return _verified[key]


def check_name_hash(path: str | os.PathLike) -> None:
    """Raise WeightsTampered if ``path``'s name carries a sha256 prefix its content does not have."""
    m = HASH_IN_NAME.search(Path(path).name)
    if m is None:
        return
    digest = sha256_of(path)
    if not digest.startswith(m.group(1)):
        raise WeightsTampered(f"{path}: sha256 {digest[:len(m.group(1))]}... does not match the prefix "
                              f"{m.group(1)} in its name; the file is not the published one, replace it")


@contextlib.contextmanager
def guarded_loads() -> Iterator[None]:
    """Within the block, torch.load is weights-only and checks hash-named files (see the module doc)."""
    import torch  # here, so that stages importing this module without IQA gates do not load torch

    original = torch.load

    original_jit = torch.jit.load

    def load(f: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(f, (str, os.PathLike)):
            check_name_hash(f)
        if is_torchscript(f):
            raise refuse_torchscript(f)
        kwargs.pop("weights_only", None)
        return original(f, *args, weights_only=True, **kwargs)

    def jit_load(f: Any, *args: Any, **kwargs: Any) -> Any:
        raise refuse_torchscript(f)

    saved = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"  # also covers callers holding torch.serialization.load
    torch.load = load
    torch.jit.load = jit_load
    try:
        yield
    finally:
        torch.load = original
        torch.jit.load = original_jit
        if saved is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = saved
