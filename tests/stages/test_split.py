"""The held-out split (stages/split.py) and the stages that respect it; the ablation rows."""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from catalog.config import ConfigError
from catalog.lake import Lake
from catalog.tracking import Tracker, TrackingConfig
from stages.split import HELDOUT, TRAIN, SplitConfig, assign_split, draw



def ids(n: int, salt: str = "") -> list[str]:
    return [hashlib.sha256(f"{salt}{i}".encode()).hexdigest() for i in range(n)]


def test_split_is_a_function_of_the_image_and_the_seed():
    images = ids(200)
    cfg = SplitConfig(heldout_fraction=0.25, seed=3)
    a = assign_split(images, cfg)
    shuffled = images[::-1] + images[:50]  # other order, duplicates
    assert assign_split(shuffled, cfg) == a
    # one image's split does not depend on the others (above min_heldout)
    assert {i: s for i, s in assign_split(images[:100], cfg).items()} == {i: a[i] for i in images[:100]}
    assert assign_split(images, SplitConfig(heldout_fraction=0.25, seed=4)) != a
    assert set(a.values()) == {TRAIN, HELDOUT}


def test_split_fraction_and_minimum():
    images = ids(4000, "f")
    held = sum(s == HELDOUT for s in assign_split(images, SplitConfig(heldout_fraction=0.2)).values())
    assert abs(held / 4000 - 0.2) < 0.02  # binomial sd 0.0063
    few = ids(8, "demo")
    for seed in range(20):
        split = assign_split(few, SplitConfig(heldout_fraction=0.0, min_heldout=2, seed=seed))
        held = sorted(i for i, s in split.items() if s == HELDOUT)
        assert held == sorted(sorted(few, key=lambda i: draw(i, seed))[:2])  # the two smallest draws
    assert set(assign_split(few, SplitConfig(heldout_fraction=0.0, min_heldout=0)).values()) == {TRAIN}


def test_split_refuses_to_hold_out_everything_and_bad_config():
    with pytest.raises(ValueError, match="none left to train on"):
        assign_split(ids(3), SplitConfig(heldout_fraction=0.5, min_heldout=3))
    with pytest.raises(ConfigError, match="split.heldout_fraction = 1.0"):
        SplitConfig(heldout_fraction=1.0)
    with pytest.raises(ConfigError, match="split.min_heldout"):
        SplitConfig(min_heldout=-1)


def png(color, size=(32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture()
def ctx(tmp_path):
    """A lake with 8 kept images (one dropped), their images rows and 2 degraded pairs each."""
    from catalog.schemas import pair_id_of
    from pipelines.common import Context

    lake = Lake(str(tmp_path / "lake"))
    images = ids(9, "img")
    lake.write_part("filtered", pa.table({"image_id": images, "keep": [True] * 8 + [False]}))
    lake.write_part("images", pa.table({"image_id": images, "url": [f"file:///{i}" for i in range(9)],
                                        "status": ["ok"] * 9, "bytes": [png((i * 20, 0, 0)) for i in range(9)]}))
    pairs = [(pair_id_of(i, "degraded", v), i) for i in images[:8] for v in range(2)]
    lake.write_part("pairs/degraded", pa.table({
        "pair_id": [p for p, _ in pairs], "image_id": [i for _, i in pairs], "kind": ["degraded"] * 16,
        "status": ["ok"] * 16, "hq": [png("white")] * 16, "lq": [png("gray")] * 16, "scale": [4] * 16,
        "params": [json.dumps({"pipeline": "realesrgan"})] * 16}))
    cfg = SimpleNamespace(split=SplitConfig(heldout_fraction=0.25, min_heldout=2, seed=0))
    return Context(cfg, lake, Tracker(TrackingConfig(enabled=False), str(tmp_path / "lake")))


def test_training_stages_read_only_the_train_split(ctx):
    from pipelines.common import data_split, train_image_ids
    from pipelines.prior import read_training_images
    from pipelines.train import _OkWithCaptions

    split = data_split(ctx)
    kept = ctx.lake.read("filtered").filter(pa.compute.equal(ctx.lake.read("filtered")["keep"], True))
    assert sorted(split) == sorted(kept["image_id"].to_pylist())  # the dropped image has no split
    held = {i for i, s in split.items() if s == HELDOUT}
    assert len(held) >= 2
    train = train_image_ids(ctx)
    assert set(train) == set(split) - held

    got, _, _ = read_training_images(ctx.lake, captions=False, allow=train)  # stage 0's input
    assert set(got) == set(train)

    block = ctx.lake.read("pairs/degraded", columns=["pair_id", "image_id", "kind", "status", "hq", "lq"])
    block = block.append_column("caption", pa.array([None] * block.num_rows, pa.string()))
    rows = _OkWithCaptions({}, train)(block)  # stages 1 and 2's input
    assert rows.num_rows == 2 * len(train) and not set(rows["image_id"].to_pylist()) & held


def test_evaluate_plans_the_split_and_the_report_puts_heldout_first(ctx, tmp_path):
    from evaluation.report import markdown_table, table1
    from pipelines.ablations import split_pair_ids
    from pipelines.evaluate import pair_split, plan_work

    split = pair_split(ctx)
    pairs = ctx.lake.read("pairs/degraded", columns=["pair_id", "image_id"])
    held_pairs = split_pair_ids(ctx, HELDOUT)
    want = sorted(p for p, i in zip(pairs["pair_id"].to_pylist(), pairs["image_id"].to_pylist())
                  if split[i] == HELDOUT)
    assert held_pairs == want and len(want) == 2 * sum(s == HELDOUT for s in split.values())
    ctx.lake.write_part("baselines", pa.table({"pair_id": pairs["pair_id"], "run_id": ["b"] * 16,
                                               "method": ["bicubic"] * 16, "status": ["ok"] * 16,
                                               "restored": [png("gray")] * 16}))
    work = plan_work(ctx.lake, split)
    assert {(p, s) for p, s in zip(work["pair_id"].to_pylist(), work["split"].to_pylist())} == {
        (p, HELDOUT if p in want else TRAIN) for p in pairs["pair_id"].to_pylist()}

    rows = [dict(pair_id=p, run_id="r", method=m, degradation="d", split=s, metric="psnry",
                 value=v + (1 if s == HELDOUT else 0), status="ok", error=None)
            for p, s in zip(work["pair_id"].to_pylist(), work["split"].to_pylist())
            for m, v in (("bicubic", 20.0), ("supir", 18.0), ("stage1", 19.0))]
    df = table1(pa.Table.from_pylist(rows))
    assert set(df["split"]) == {HELDOUT, TRAIN}
    mean = {(r.split, r.method): r.mean for r in df.itertuples()}
    assert mean[(HELDOUT, "bicubic")] == 21.0 and mean[(TRAIN, "supir")] == 18.0
    md = markdown_table(df, ["psnry"])
    assert md.index("Held-out photos") < md.index("Training photos")
    heldout_part = md[:md.index("Training photos")]
    assert "| Degradation | Metric | Bicubic | Stage 1 D(E_dr(x_LQ)) | SUPIR (ours) |" in heldout_part
    assert "| d | psnry ↑ | **21.00** | 20.00 | 19.00 |" in heldout_part


def test_ablation_runs_cover_rows_and_seeds():
    from stages.ablations import AblationConfig, ablation_runs
    from stages.restore import RestoreConfig

    restore = RestoreConfig(model="m")
    runs = ablation_runs(restore, AblationConfig(seeds=[1, 2]))
    got = [(r.mode, r.method, r.restore.sampler.seed, r.restore.sampler.control_scale) for r in runs]
    assert got == [("vae", "vae", 0, 1.0), ("stage1", "stage1", 0, 1.0),
                   ("sample", "supir_control0", 0, 0.0),
                   ("sample", "supir_control0", 1, 0.0), ("sample", "supir", 1, 1.0),
                   ("sample", "supir_control0", 2, 0.0), ("sample", "supir", 2, 1.0)]
    run_ids = [r.restore.resolved_run_id() for r in runs] + [restore.resolved_run_id()]
    assert len(set(run_ids)) == len(run_ids)  # every run its own restorations partition
    with pytest.raises(ConfigError, match="ablations.methods"):
        AblationConfig(methods=["stage2"])


def test_pass_through_rows_are_the_vae_round_trips():
    from model.config import ModelConfig
    from model.images import to_tensor
    from model.supir import build_model
    from stages.ablations import AblationRun, PassThroughRestorer
    from stages.restore import RestoreConfig

    model = build_model(ModelConfig(preset="tiny")).eval()
    with torch.no_grad():  # make E_dr differ from E, as after stage 1
        for p in model.encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    rng = np.random.default_rng(0)
    img = Image.fromarray((np.kron(rng.random((8, 8, 3)), np.ones((8, 8, 1))) * 255).astype(np.uint8))
    cfg = RestoreConfig(model="-", min_size=64, progress=False)
    x = to_tensor(img)
    outs = {}
    for mode, enc in (("vae", model.encode), ("stage1", model.encode_lq)):
        r = PassThroughRestorer(AblationRun(cfg, mode), model=model)
        got = np.asarray(r.restore(img, "k"), dtype=np.float32)
        with torch.no_grad():
            want = ((model.decode(enc(x)).clamp(-1, 1)[0].permute(1, 2, 0) + 1) * 127.5).numpy()
        assert np.abs(got - want).max() <= 1.0  # rounding to uint8 only
        outs[mode] = got
    assert np.abs(outs["vae"] - outs["stage1"]).mean() > 0.5
