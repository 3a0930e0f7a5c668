"""The evaluation report: a table shaped like the paper's Table 1, a chart, a sample grid.

Table 1 of SUPIR (Yu et al., CVPR 2024) lists, per degradation, one row per metric and one column
per method. :data:`TABLE1_SQL` computes it in long form from the `metrics` table (the same SQL
is the canned DuckDB query ``table1``, so the report and ``python -m catalog.sql -q table1``
agree); :func:`markdown_table` pivots it, marks the best method per row in bold and writes a
metric whose weights were missing as "n/a" (unavailable), never 0.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd
import pyarrow as pa
from PIL import Image

from catalog.sql import CANNED

from evaluation.grids import make_grid
from evaluation.metrics import lower_better

# one row per (degradation, method, metric): the mean over pairs with a value, how many pairs
# had one, and "unavailable"/"error" when none had
TABLE1_SQL = CANNED["table1"]

# display names, in the column order of the report (other methods follow, sorted); the ablation rows
# (pipelines/ablations.py) sit between the baselines and the trained model
METHOD_ORDER = ("bicubic", "realesrgan", "vae", "stage1", "supir_control0", "supir")
METHOD_LABELS = {"bicubic": "Bicubic", "realesrgan": "Real-ESRGAN", "vae": "D(E(x_LQ)) untrained E",
                 "stage1": "Stage 1 D(E_dr(x_LQ))", "supir_control0": "SUPIR control 0", "supir": "SUPIR (ours)"}
# report sections, in order: Table 1 is on the held-out photos (stages/split.py)
SPLIT_ORDER = ("heldout", "train", "all")
SPLIT_TITLES = {"heldout": "Held-out photos (no training stage saw them): Table 1",
                "train": "Training photos (seen by stages 0-2: checks the pipeline, not generalisation)",
                "all": "All pairs (no split recorded)"}


def table1(metrics: pa.Table | Sequence[str]) -> pd.DataFrame:
    """The long Table 1 of a `metrics` Arrow table or of its Parquet files, through DuckDB (TABLE1_SQL).

    Given files, DuckDB streams them: the driver never holds the whole long table.
    """
    import duckdb

    con = duckdb.connect()
    if isinstance(metrics, pa.Table):
        con.register("metrics", metrics)
    elif metrics:
        files = ", ".join("'" + str(f).replace("'", "''") + "'" for f in metrics)
        con.execute(f"CREATE VIEW metrics AS SELECT * FROM read_parquet([{files}], union_by_name = true)")
    else:
        from catalog.schemas import METRICS

        con.register("metrics", METRICS.empty_table())
    return con.execute(TABLE1_SQL).df()


def method_order(methods: Sequence[str]) -> list[str]:
    return [m for m in METHOD_ORDER if m in methods] + sorted(m for m in set(methods) if m not in METHOD_ORDER)


def _fmt(v: float) -> str:
    return f"{v:.2f}" if abs(v) >= 10 else f"{v:.4f}"


def split_order(splits: Sequence[str]) -> list[str]:
    return [s for s in SPLIT_ORDER if s in splits] + sorted(s for s in set(splits) if s not in SPLIT_ORDER)


def markdown_table(df: pd.DataFrame, metric_order: Optional[Sequence[str]] = None) -> str:
    """One table per split (held-out first) when ``df`` has a split column with a known split; see
    :func:`markdown_block`."""
    if df.empty or "split" not in df.columns or set(df["split"]) == {"all"}:
        return markdown_block(df, metric_order)
    parts = []
    for split in split_order(list(df["split"].unique())):
        block = df[df["split"] == split]
        pairs = int(block.loc[block["status"] == "ok", "n"].max() or 0) if "n" in block else 0
        parts.append(f"## {SPLIT_TITLES.get(split, split)}\n\n{pairs} scored rows per method and metric "
                     f"(pairs x runs)\n\n" + markdown_block(block, metric_order))
    return "\n".join(parts)


def markdown_block(df: pd.DataFrame, metric_order: Optional[Sequence[str]] = None) -> str:
    """Per degradation: rows = metrics (with ↑/↓), columns = methods; best in bold; n/a = unavailable."""
    if df.empty:
        return "_no metrics_\n"
    methods = method_order(df["method"].unique())
    metrics = list(metric_order or []) + sorted(set(df["metric"]) - set(metric_order or []))
    metrics = [m for m in metrics if m in set(df["metric"])]
    lines = ["| Degradation | Metric | " + " | ".join(METHOD_LABELS.get(m, m) for m in methods) + " |",
             "|---|---|" + "---:|" * len(methods)]
    for deg, block in df.groupby("degradation", sort=True):
        cells = {(r.method, r.metric): r for r in block.itertuples()}
        for metric in metrics:
            vals = {m: cells[(m, metric)].mean for m in methods
                    if (m, metric) in cells and cells[(m, metric)].status == "ok"}
            best = None
            if len(vals) > 1:
                best = (min if lower_better(metric) else max)(vals, key=vals.get)
            row = []
            for m in methods:
                r = cells.get((m, metric))
                if r is None:
                    row.append("")
                elif r.status != "ok" or r.mean is None or (isinstance(r.mean, float) and math.isnan(r.mean)):
                    row.append("n/a" if r.status == "unavailable" else r.status)
                else:
                    s = _fmt(float(r.mean))
                    row.append(f"**{s}**" if m == best else s)
            arrow = "↓" if lower_better(metric) else "↑"
            lines.append(f"| {deg} | {metric} {arrow} | " + " | ".join(row) + " |")
    unavailable = sorted(set(df.loc[df["status"] == "unavailable", "metric"]))
    out = "\n".join(lines) + "\n"
    if unavailable:
        out += f"\nn/a: weights not in the weights folder ({', '.join(unavailable)}); see evaluation/metrics.py.\n"
    return out


def chart(df: pd.DataFrame, metric_order: Optional[Sequence[str]] = None) -> Image.Image:
    """Grouped bars: one panel per metric, one group per degradation, one bar per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = df[df["status"] == "ok"]
    metrics = [m for m in (list(metric_order or []) + sorted(set(ok["metric"]) - set(metric_order or [])))
               if m in set(ok["metric"])]
    methods = method_order(df["method"].unique())
    degs = sorted(df["degradation"].unique())
    n = max(1, len(metrics))
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    width = 0.8 / max(1, len(methods))
    for k, metric in enumerate(metrics):
        ax = axes[k // cols][k % cols]
        for j, method in enumerate(methods):
            ys = []
            for d in degs:
                sel = ok[(ok["metric"] == metric) & (ok["method"] == method) & (ok["degradation"] == d)]
                ys.append(float(sel["mean"].iloc[0]) if len(sel) else float("nan"))
            ax.bar([i + j * width for i in range(len(degs))], ys, width, label=METHOD_LABELS.get(method, method))
        ax.set_title(f"{metric} {'↓' if lower_better(metric) else '↑'}", fontsize=9)
        ax.set_xticks([i + width * (len(methods) - 1) / 2 for i in range(len(degs))])
        ax.set_xticklabels(degs, fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
    for k in range(len(metrics), rows * cols):
        axes[k // cols][k % cols].axis("off")
    if metrics:
        axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def sample_grid(rows: list[dict[str, bytes]], methods: Sequence[str], cell: int = 192) -> Image.Image:
    """LQ | bicubic | Real-ESRGAN | ours ... | HQ, one row per pair (dicts of PNG bytes by column)."""
    order = ["lq"] + method_order(methods) + ["hq"]
    labels = ["LQ"] + [METHOD_LABELS.get(m, m) for m in method_order(methods)] + ["HQ"]
    images = [[Image.open(io.BytesIO(r[c])) if r.get(c) else Image.new("RGB", (8, 8), "white") for c in order]
              for r in rows]
    return make_grid(images, labels=labels, cell=cell)


def write_report(out_dir: str | Path, df: pd.DataFrame, grid_rows: Optional[list[dict[str, bytes]]] = None,
                 metric_order: Optional[Sequence[str]] = None) -> dict[str, Path]:
    """table1.md, table1.parquet, table1.png and (with grid_rows) grid.png in ``out_dir``; df = table1(...)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"table1.md": out / "table1.md", "table1.parquet": out / "table1.parquet", "table1.png": out / "table1.png"}
    paths["table1.md"].write_text("# Evaluation (paper Table 1 layout)\n\n" + markdown_table(df, metric_order))
    df.to_parquet(paths["table1.parquet"], index=False)
    held = df[df["split"] == "heldout"] if "split" in df.columns else df
    chart(held if len(held) else df, metric_order).save(paths["table1.png"])  # the chart shows Table 1
    if grid_rows:
        methods = sorted({k for r in grid_rows for k in r if k not in ("lq", "hq", "pair_id")})
        paths["grid.png"] = out / "grid.png"
        sample_grid(grid_rows, methods).save(paths["grid.png"])
    return paths
