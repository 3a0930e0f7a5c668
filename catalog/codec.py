"""One image decoder and one PNG encoder for every stage.

Pillow decodes; this module decides what every stage does with what Pillow returns, so that the
filter, the captioner, degradation, training and restoration all see the same pixels, and says
what it did:

- the pixel count is read from the header and checked against ``max_pixels`` before any pixel is
  decoded (a 48 KB PNG can claim 100 megapixels): :class:`DecodeError` with status ``too_large``;
- EXIF orientation is applied (a phone photo stored sideways comes out upright);
- 16-bit samples are scaled to 8 bits (``v * 255 / 65535``, rounded), where Pillow's
  ``convert("RGB")`` clips them and a 16-bit grey PNG comes out white;
- alpha is composited over white (or dropped, ``alpha="drop"``): transparent pixels do not turn
  into whatever colour the file stores under them;
- each of these adds a note to :attr:`Decoded.notes`.

A file Pillow cannot read is ``DecodeError("decode_error")``; the message never quotes the data.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from PIL import Image, ImageOps

ALPHA_MODES = ("RGBA", "LA", "La", "RGBa", "PA")
WIDE_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")  # 16-bit (and 32-bit integer) samples


class DecodeError(ValueError):
    """An image that cannot or may not be decoded; ``status`` is ``too_large`` or ``decode_error``."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Decoded:
    """An RGB image and what was done to get it."""

    image: Image.Image  # mode "RGB"
    format: str | None  # Pillow's format name of the encoded data
    size: tuple[int, int]  # (width, height) stored in the header, before orientation
    notes: list[str] = field(default_factory=list)

    def array(self) -> np.ndarray:
        """(H, W, 3) uint8."""
        return np.asarray(self.image)


def header_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the header alone; DecodeError if Pillow cannot identify the data."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                return im.size
    except Image.DecompressionBombError as e:
        raise DecodeError("too_large", str(e)[:300]) from None
    except Exception as e:  # noqa: BLE001 - any codec failure is a property of the data
        raise DecodeError("decode_error", f"{type(e).__name__}: {e}"[:300]) from None


def decode(data: bytes, max_pixels: int | None = None, alpha: Literal["white", "drop"] = "white",
           draft: tuple[int, int] | None = None) -> Decoded:
    """Encoded image -> :class:`Decoded` (see the module doc). ``draft``: a (w, h) a JPEG may be
    decoded down to (Pillow's DCT scaling; never below it), for stages that shrink anyway."""
    try:
        with warnings.catch_warnings():  # the size is checked below, against max_pixels
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(bytes(data)))
    except Image.DecompressionBombError as e:
        raise DecodeError("too_large", str(e)[:300]) from None
    except Exception as e:  # noqa: BLE001
        raise DecodeError("decode_error", f"{type(e).__name__}: {e}"[:300]) from None
    with im:
        size, fmt = im.size, im.format
        if max_pixels is not None and size[0] * size[1] > max_pixels:
            raise DecodeError("too_large", f"{size[0]}x{size[1]} = {size[0] * size[1]} pixels > max_pixels {max_pixels}")
        notes: list[str] = []
        try:
            if draft is not None and fmt == "JPEG":
                im.draft("RGB", draft)
            im.load()
            img = _orient(im, notes)
            img = _to_rgb(img, alpha, notes)
        except DecodeError:
            raise
        except Exception as e:  # noqa: BLE001 - truncated or corrupt streams fail in load()
            raise DecodeError("decode_error", f"{type(e).__name__}: {e}"[:300]) from None
    return Decoded(img, fmt, size, notes)


def decode_rgb(data: bytes, max_pixels: int | None = None, draft: tuple[int, int] | None = None) -> Image.Image:
    """The RGB image alone (see :func:`decode`)."""
    return decode(data, max_pixels, draft=draft).image


def decode_array(data: bytes, max_pixels: int | None = None) -> np.ndarray:
    """(H, W, 3) uint8 (see :func:`decode`)."""
    return decode(data, max_pixels).array()


def encode_png(image: Image.Image | np.ndarray, compress_level: int = 6) -> bytes:
    """PNG bytes of an image or an (H, W, 3) / (H, W) uint8 array (deterministic for a given zlib)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def _orient(im: Image.Image, notes: list[str]) -> Image.Image:
    orientation = im.getexif().get(0x0112, 1)  # EXIF Orientation tag
    if orientation in (None, 1):
        return im
    notes.append(f"exif orientation {orientation} applied")
    return ImageOps.exif_transpose(im)


def _to_rgb(im: Image.Image, alpha: str, notes: list[str]) -> Image.Image:
    if im.mode in WIDE_MODES:
        arr = np.asarray(im).astype(np.float64)
        peak = 65535.0 if im.mode != "I" or arr.max(initial=0) <= 65535 else float(arr.max())
        notes.append(f"{'16' if peak == 65535.0 else '32'}-bit samples scaled to 8-bit")
        im = Image.fromarray(np.clip(np.rint(arr * (255.0 / peak)), 0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
        notes.append("float samples scaled to 8-bit")
        im = Image.fromarray(np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8), "L")
    if im.mode in ("L", "P", "1") and "transparency" in im.info:  # palette or colour-key transparency
        im = im.convert("RGBA")
    if im.mode in ALPHA_MODES:
        rgba = im.convert("RGBA")
        if rgba.getchannel("A").getextrema()[0] < 255:
            if alpha == "drop":
                notes.append("alpha dropped")
            else:
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                rgba = Image.alpha_composite(white, rgba)
                notes.append("alpha composited over white")
        return rgba.convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")
