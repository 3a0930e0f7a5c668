"""Image grids for MLflow artifacts and reports: rows of images (e.g. LQ | restored | HQ)."""
from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

_PAD = 2  # pixels between cells
_BG = (255, 255, 255)


def _fit(img: Image.Image, cell: int) -> Image.Image:
    """Resize to fit a cell x cell box keeping the aspect ratio (bicubic, so a small LQ is shown
    upscaled as a bicubic baseline would), centred on a white cell."""
    img = img.convert("RGB")
    s = cell / max(img.size)
    size = (max(1, round(img.width * s)), max(1, round(img.height * s)))
    if size != img.size:
        img = img.resize(size, Image.Resampling.BICUBIC)
    out = Image.new("RGB", (cell, cell), _BG)
    out.paste(img, ((cell - size[0]) // 2, (cell - size[1]) // 2))
    return out


def make_grid(rows: list[list[Image.Image]], labels: list[str] | None = None, cell: int = 256) -> Image.Image:
    """One grid image: rows[r][c] in a cell x cell box each, optional column labels on top.

    Rows may have different lengths (missing cells stay white). labels, when given, name the
    columns (e.g. ["LQ", "restored", "HQ"]).
    """
    if cell < 8:
        raise ValueError(f"cell must be >= 8 pixels, got {cell}")
    n_cols = max([len(r) for r in rows] + [len(labels or [])] + [1])
    font = ImageFont.load_default()
    header = 0
    if labels:
        header = max(ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), t, font=font)[3] for t in labels) + 2 * _PAD
    width = n_cols * cell + (n_cols + 1) * _PAD
    height = header + len(rows) * cell + (len(rows) + 1) * _PAD
    grid = Image.new("RGB", (width, height), _BG)
    draw = ImageDraw.Draw(grid)
    for c, text in enumerate(labels or []):
        draw.text((_PAD + c * (cell + _PAD) + _PAD, _PAD), text, fill=(0, 0, 0), font=font)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            grid.paste(_fit(img, cell), (_PAD + c * (cell + _PAD), header + _PAD + r * (cell + _PAD)))
    return grid
