"""IQA metrics through pyiqa: config, the weights folder, unavailable metrics, pyiqa parity, the report."""
from __future__ import annotations

import io
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from PIL import Image

from catalog.config import ConfigError, from_dict
from catalog.lake import conform
from evaluation.metrics import EvalConfig, WeightsMissing, check_metric_names, load_metric, weights_folder
from evaluation.report import markdown_table, table1, write_report
from stages.evaluate import Evaluator
from tests.support.iqa_weights import demo_pairs, has_niqe, seeded_weights


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder, report = seeded_weights(tmp_path_factory.mktemp("weights"))
    return folder


@pytest.fixture(scope="module")
def pairs(photos):
    return demo_pairs(photos, 2, gt_size=128)


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def restored_and_hq(pairs):
    """Bicubic upscalings of the LQs (a stand-in restoration) beside their HQs."""
    restored, hq = [], []
    for lq, h in zip(pairs["lq"], pairs["hq"]):
        size = Image.open(io.BytesIO(h)).size
        restored.append(png(Image.open(io.BytesIO(lq)).convert("RGB").resize(size, Image.Resampling.BICUBIC)))
        hq.append(bytes(h))
    return restored, hq


def batch(restored, hq, method="bicubic"):
    n = len(restored)
    obj = lambda v: np.array(v + [None], dtype=object)[:-1]  # noqa: E731
    return {"pair_id": obj([f"p{i}" for i in range(n)]), "method": obj([method] * n), "run_id": obj(["r1"] * n),
            "restored": obj(restored), "hq": obj(hq), "degradation": obj(["realesrgan x4"] * n)}


def test_config_checks_metric_names():
    assert EvalConfig().metrics == ["psnry", "ssim", "lpips", "dists", "maniqa", "clipiqa", "musiq", "niqe"]
    cfg = from_dict(EvalConfig, {"metrics": ["psnry", "not_a_metric"]}, prefix="evaluate")
    with pytest.raises(ConfigError, match="evaluate.metrics.*not_a_metric"):
        check_metric_names(cfg)  # the preflight (pyiqa is slow to import, so not in __post_init__)
    check_metric_names(EvalConfig(metrics=["psnry", "stlpips", "brisque_pkg"]))
    with pytest.raises(ConfigError, match="evaluate.metrics"):
        EvalConfig(metrics=["psnry", "psnry"])
    with pytest.raises(ConfigError, match="evaluate.batch_size"):
        EvalConfig(batch_size=0)


def test_missing_weights_are_unavailable_without_any_download(tmp_path):
    import torch.hub

    import pyiqa.utils.download_util as du

    before = (torch.hub.get_dir(), du.DEFAULT_CACHE_DIR)
    m = load_metric("lpips", tmp_path / "empty", torch.device("cpu"))
    assert m.status == "unavailable" and "alexnet" in m.error and "allow_download" in m.error
    assert (torch.hub.get_dir(), du.DEFAULT_CACHE_DIR) == before  # the redirect is undone
    with weights_folder(tmp_path / "empty"):
        with pytest.raises(WeightsMissing):
            torch.hub.download_url_to_file("https://example.invalid/x.pth", str(tmp_path / "x.pth"))


def test_weight_free_and_unavailable_metrics_in_the_rows(pairs, tmp_path):
    restored, hq = restored_and_hq(pairs)
    ev = Evaluator(EvalConfig(metrics=["psnry", "lpips", "musiq"], weights_dir=str(tmp_path / "empty")))
    assert ev.availability() == {"psnry": "ok", "lpips": "unavailable", "musiq": "unavailable"}
    rows = conform("metrics", ev(batch(restored, hq)))  # fits the lake's METRICS schema
    assert rows.num_rows == 2 * 3
    for r in rows.to_pylist():
        if r["metric"] == "psnry":
            assert r["status"] == "ok" and 10 < r["value"] < 60
        else:  # null, never 0
            assert r["status"] == "unavailable" and r["value"] is None and r["error"]


def test_values_equal_pyiqa_own_call(pairs, weights, tmp_path):
    """Each value in the rows is what pyiqa.create_metric(name)(restored file, hq file) returns."""
    import pyiqa

    restored, hq = restored_and_hq(pairs)
    names = ["psnry", "ssim", "psnr", "stlpips"] + (["niqe"] if has_niqe(weights) else [])
    ev = Evaluator(EvalConfig(metrics=names, weights_dir=str(weights), batch_size=2))
    assert set(ev.availability().values()) == {"ok"}
    rows = ev(batch(restored, hq)).to_pylist()
    paths = []
    for i, (r, h) in enumerate(zip(restored, hq)):
        (tmp_path / f"r{i}.png").write_bytes(r)
        (tmp_path / f"h{i}.png").write_bytes(h)
        paths.append((str(tmp_path / f"r{i}.png"), str(tmp_path / f"h{i}.png")))
    for name in names:
        kwargs = {}
        if name == "stlpips":
            kwargs["pretrained_model_path"] = str(weights / "pyiqa" / "alex_shift_tolerant.pth")
        if name == "niqe":
            kwargs["pretrained_model_path"] = str(weights / "pyiqa" / "niqe_modelparameters.mat")
        metric = pyiqa.create_metric(name, device="cpu", **kwargs)
        for i, (rp, hp) in enumerate(paths):
            own = float(metric(rp, hp) if metric.metric_mode == "FR" else metric(rp))
            ours = next(r["value"] for r in rows if r["metric"] == name and r["pair_id"] == f"p{i}")
            assert ours == pytest.approx(own, rel=1e-5, abs=1e-6), name


def test_brisque_from_the_brisque_package(photos):
    brisque = pytest.importorskip("brisque", reason="the brisque package is not installed")
    from PIL import ImageFilter

    sharp = Image.open(photos[0]).convert("RGB").resize((384, 256))
    images = [png(sharp), png(sharp.filter(ImageFilter.GaussianBlur(2))), png(sharp.filter(ImageFilter.GaussianBlur(4)))]
    rows = Evaluator(EvalConfig(metrics=["brisque_pkg"]))(batch(images, [None] * 3)).to_pylist()
    assert all(r["status"] == "ok" for r in rows)
    values = [r["value"] for r in rows]
    assert values[0] < values[1] < values[2]  # lower is better: blur scores worse
    try:  # the package's own call, where its numpy handling works
        own = brisque.BRISQUE(url=False).score(np.asarray(sharp))
    except TypeError as e:  # brisque 0.2.0 + numpy >= 2.4: float() of a 1-element array
        pytest.skip(f"brisque's own score() fails with this numpy ({e}); values checked for order only")
    assert values[0] == pytest.approx(float(own), rel=1e-9)


def test_a_bad_row_is_an_error_row_not_a_failed_batch(pairs):
    restored, hq = restored_and_hq(pairs)
    small = png(Image.new("RGB", (16, 16)))
    rows = Evaluator(EvalConfig(metrics=["psnry"]))(batch([restored[0], b"not a png", small], hq + [hq[0]])).to_pylist()
    assert [r["status"] for r in rows] == ["ok", "error", "error"]
    assert "differ in size" in rows[2]["error"] and rows[1]["value"] is None


def metrics_table() -> pa.Table:
    rows = []
    for method, psnr, lp in (("bicubic", 22.0, 0.5), ("realesrgan", 23.5, 0.3), ("supir", 21.0, 0.35)):
        for p in range(2):
            rows.append(dict(pair_id=f"p{p}", run_id="r", method=method, degradation="realesrgan x4", metric="psnry",
                             value=psnr + p, status="ok", error=None))
            rows.append(dict(pair_id=f"p{p}", run_id="r", method=method, degradation="realesrgan x4",
                             metric="stlpips", value=lp, status="ok", error=None))
            rows.append(dict(pair_id=f"p{p}", run_id="r", method=method, degradation="realesrgan x4", metric="musiq",
                             value=None, status="unavailable", error="weights"))
    return conform("metrics", pa.Table.from_pylist(rows))


def test_report_table_chart_and_grid(tmp_path):
    t = metrics_table()
    df = table1(t)
    assert len(df) == 9
    md = markdown_table(df, ["psnry", "stlpips", "musiq"])
    lines = md.splitlines()
    assert lines[0] == "| Degradation | Metric | Bicubic | Real-ESRGAN | SUPIR (ours) |"
    assert "| realesrgan x4 | psnry ↑ | 22.50 | **24.00** | 21.50 |" in lines
    assert "| realesrgan x4 | stlpips ↓ | 0.5000 | **0.3000** | 0.3500 |" in lines
    assert "| realesrgan x4 | musiq ↑ | n/a | n/a | n/a |" in lines
    tile = png(Image.new("RGB", (32, 32), "gray"))
    grid_rows = [{"pair_id": "p0", "lq": tile, "hq": tile, "bicubic": tile, "realesrgan": tile, "supir": tile}]
    paths = write_report(tmp_path, df, grid_rows, ["psnry", "stlpips", "musiq"])
    assert set(paths) == {"table1.md", "table1.parquet", "table1.png", "grid.png"}
    assert Image.open(paths["table1.png"]).size[0] > 200
    assert Image.open(paths["grid.png"]).size[0] >= 5 * 192
    import pandas as pd

    back = pd.read_parquet(paths["table1.parquet"])
    assert math.isnan(back.loc[back.metric == "musiq", "mean"].iloc[0])


def test_plan_work_and_gather_join_restorations_with_their_pairs(pairs, tmp_path):
    """The shuffle-free join of the evaluate stage: keys in the driver, images read per batch."""
    from catalog import layout
    from catalog.lake import Lake
    from pipelines.evaluate import GatherImages, _key, plan_work

    lake = Lake(str(tmp_path / "lake"))
    ids = list(pairs["pair_id"])
    lake.write_part("pairs", pa.table({k: list(v) for k, v in pairs.items()}))
    restored, hq = restored_and_hq(pairs)
    lake.write_part("restorations", pa.table({"pair_id": ids + ["not-a-pair"], "run_id": ["s"] * 3,
                                              "method": ["supir"] * 3, "status": ["ok", "error", "ok"],
                                              "restored": [restored[0], None, restored[1]]}))
    for i in range(2):  # one part per pair
        lake.write_part(layout.BASELINES, pa.table({"pair_id": [ids[i]], "run_id": ["b"], "method": ["bicubic"],
                                                   "status": ["ok"], "restored": [restored[i]]}))
    work = plan_work(lake)
    assert sorted(zip(work["pair_id"].to_pylist(), work["method"].to_pylist())) == sorted(
        [(ids[0], "supir"), (ids[0], "bicubic"), (ids[1], "bicubic")])  # error rows and unknown pairs left out
    assert set(work["degradation"].to_pylist()) == {"realesrgan x4"}
    got = GatherImages(lake.root)(work).to_pylist()
    for r in got:
        assert r["restored"] == restored[ids.index(r["pair_id"])] and r["hq"] == hq[ids.index(r["pair_id"])]
    done = work.slice(0, 1)
    rest = work.filter(pc.invert(pc.is_in(_key(work), value_set=_key(done))))
    assert rest.num_rows == 2


def test_table1_from_parquet_files_equals_from_a_table(tmp_path):
    import pyarrow.parquet as pq

    t = metrics_table()
    pq.write_table(t.slice(0, 7), tmp_path / "a.parquet")
    pq.write_table(t.slice(7), tmp_path / "b.parquet")
    import pandas as pd

    pd.testing.assert_frame_equal(table1([tmp_path / "a.parquet", tmp_path / "b.parquet"]), table1(t))


def test_rgb_mean_diff_is_the_largest_channel_mean_shift(tmp_path):
    from stages.evaluate import Evaluator

    def solid(rgb, size=(24, 16)):
        return png(Image.new("RGB", size, rgb))

    half = Image.new("RGB", (24, 16), (0, 0, 0))
    half.paste((200, 100, 50), (0, 0, 12, 16))  # channel means 100, 50, 25
    ev = Evaluator(EvalConfig(metrics=["rgb_mean_diff"], weights_dir=str(tmp_path), seed_offline=False))
    rows = ev({"pair_id": np.array(["a", "b"], dtype=object), "method": np.array(["m", "m"], dtype=object),
               "run_id": np.array(["r", "r"], dtype=object),
               "restored": np.array([solid((100, 50, 200)), png(half)], dtype=object),
               "hq": np.array([solid((103, 50, 190)), solid((100, 47, 25))], dtype=object)})
    assert rows["value"].to_pylist() == [10.0, 3.0] and set(rows["status"].to_pylist()) == {"ok"}
