"""The restore stage (Ray-free Restorer) and the folder pipeline (Ray)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from catalog.config import ConfigError
from catalog.lake import conform
from model.config import ModelConfig
from model.sampler import SamplerConfig
from model.tiling import TilingConfig
from catalog.codec import encode_png
from stages.restore import RestoreConfig, Restorer

from tests.support import ROOT

FAST = dict(min_size=64, progress=False, sampler=SamplerConfig(num_steps=3))


@pytest.fixture(scope="module")
def tiny_model():
    from model.supir import build_model

    return build_model(ModelConfig(preset="tiny"))


@pytest.fixture(scope="module")
def checkpoint(tiny_model, tmp_path_factory):
    from model.checkpoint import save_trainable

    return save_trainable(tiny_model, tmp_path_factory.mktemp("ckpt") / "supir-tiny")


def photo(seed: int, size=(40, 32)) -> bytes:
    rng = np.random.default_rng(seed)
    base = np.kron(rng.random((size[1] // 8, size[0] // 8, 3)), np.ones((8, 8, 1)))  # blocky, some structure
    return encode_png(Image.fromarray((base * 255).astype(np.uint8)))


def batch(lq: list, captions=None, scales=None) -> dict[str, np.ndarray]:
    out = {"pair_id": np.array([f"p{i}" for i in range(len(lq))], dtype=object),
           "lq": np.array(lq + [None], dtype=object)[:-1]}
    if captions is not None:
        out["caption"] = np.array(captions + [None], dtype=object)[:-1]
    if scales is not None:
        out["scale"] = np.array(scales, dtype=np.int32)
    return out


def test_corrupt_rows_get_a_status_and_the_batch_completes(tiny_model):
    r = Restorer(RestoreConfig(model="-", **FAST), model=tiny_model)
    good = photo(0)
    truncated = good[: len(good) // 2]
    out = r(batch([good, b"not an image at all", truncated, None, photo(1, (48, 24))],
                  captions=["a red house", None, None, None, ""], scales=[2, 1, 1, 1, 1]))
    assert list(out["status"]) == ["ok", "decode_error", "decode_error", "decode_error", "ok"]
    assert all(e for e in out["error"][1:4]) and out["error"][0] is None
    assert Image.open(io.BytesIO(out["restored"][0])).size == (80, 64)  # the row's scale 2
    assert Image.open(io.BytesIO(out["restored"][4])).size == (48, 24)
    assert len(set(out["run_id"])) == 1 and set(out["method"]) == {"supir"}
    assert json.loads(out["params"][0])["sampler"]["num_steps"] == 3
    assert (out["seconds"] > 0).all()
    table = conform("restorations", pa.table({k: list(v) for k, v in out.items()}))  # the lake's schema
    assert table.num_rows == 5


def test_same_seed_same_output(tiny_model):
    img = photo(2)
    a = Restorer(RestoreConfig(model="-", **FAST), model=tiny_model)(batch([img, img]))
    b = Restorer(RestoreConfig(model="-", **FAST), model=tiny_model)(batch([img]))
    assert a["restored"][0] == b["restored"][0]  # same seed, same pair_id: same bytes
    assert a["restored"][0] != a["restored"][1]  # the pair_id seeds the noise
    other = dict(FAST, sampler=SamplerConfig(num_steps=3, seed=1))
    c = Restorer(RestoreConfig(model="-", **other), model=tiny_model)(batch([img]))
    assert c["restored"][0] != a["restored"][0]


def test_tiled_path_and_checkpoint_loading(checkpoint):
    tiles = TilingConfig(tile_size=8, tile_stride=4, encoder_tile_size=64, encoder_tile_overlap=16,
                         decoder_tile_size=8, decoder_tile_overlap=2)
    cfg = RestoreConfig(model=str(checkpoint), tiling=tiles, color_fix="adain", device="cpu",
                        **dict(FAST, min_size=128, sampler=SamplerConfig(num_steps=2)))
    r = Restorer(cfg, timings=True)  # loads the saved checkpoint
    out = r(batch([photo(3, (64, 48))], captions=["a photo"]))
    assert list(out["status"]) == ["ok"], out["error"]
    assert r.last_info["sampling_size"] == (192, 128)  # latent 24 x 16: 5 x 3 tiles of 8
    assert out["sampling_seconds"][0] > 0
    assert Image.open(io.BytesIO(out["restored"][0])).size == (64, 48)


def test_restore_config_checks():
    with pytest.raises(ConfigError, match="restore.color_fix"):
        RestoreConfig(color_fix="magic")
    with pytest.raises(ConfigError, match="restore.min_size"):
        RestoreConfig(min_size=100)
    assert RestoreConfig().resolved_run_id() == RestoreConfig().resolved_run_id()
    assert RestoreConfig().resolved_run_id() != RestoreConfig(sampler=SamplerConfig(tau_r=0)).resolved_run_id()


@pytest.mark.ray
@pytest.mark.slow
def test_restore_folder_pipeline(checkpoint, tmp_path):
    from mlflow import MlflowClient

    from pipelines.restore import main

    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    (src / "a.png").write_bytes(photo(4))
    Image.open(io.BytesIO(photo(5, (32, 40)))).save(src / "sub" / "b.jpg")
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (src / "a.jpg").write_bytes(photo(7))  # a PNG named .jpg: its output must not replace a.png's
    out = tmp_path / "out"
    lake = tmp_path / "lake"
    rc = main(["--input", str(src), "--output", str(out), f"restore.model={checkpoint}", "restore.sampler.num_steps=2",
               "restore.min_size=64", "ray.num_cpus=2", f"lake={lake}", "restore.progress=false",
               "ray.progress_bars=false", "restore.sampler.s_churn=0"])
    assert rc == 0
    assert Image.open(out / "a.png").size == (40, 32)
    assert Image.open(out / "sub" / "b.png").size == (32, 40)
    assert not (out / "broken.png").exists()
    assert (out / "a.jpg.png").is_file() and Image.open(out / "a.jpg.png").size == (40, 32)
    client = MlflowClient(tracking_uri=f"sqlite:///{lake.resolve() / 'mlflow.db'}")
    exp = client.get_experiment_by_name("supir")
    stage = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("stage") == "restore"][0]
    m = stage.data.metrics
    assert m["ok"] == 3 and m["status.decode_error"] == 1
    assert m["seconds_per_image"] > 0 and m["steps_per_second"] > 0
    assert stage.data.params["sampler.num_steps"] == "2"
    names = [a.path for a in client.list_artifacts(stage.info.run_id)]
    assert "restore_grid.png" in names and "failed.json" in names


def test_pairs_restore_to_their_hq_size(tiny_model):
    """SUPIR-mode pairs store the LQ at the HQ size: scale 4 in the row must not upscale again."""
    lq_small, lq_at_gt = photo(3, (16, 16)), photo(3, (64, 64))
    b = batch([lq_small, lq_at_gt], scales=[4, 4])
    b["hq"] = np.array([photo(4, (64, 64)), photo(4, (64, 64))], dtype=object)
    out = Restorer(RestoreConfig(model="-", **FAST), model=tiny_model)(b)
    assert list(out["status"]) == ["ok", "ok"]
    assert [Image.open(io.BytesIO(r)).size for r in out["restored"]] == [(64, 64), (64, 64)]


def test_untrusted_inputs_get_statuses_and_notes(tiny_model):
    """A 100 MP header is too_large before decoding; 16-bit grey and RGBA are restored with a note."""
    from tests.support.http_faults import huge_png

    a16 = (np.arange(32 * 40, dtype=np.uint32).reshape(32, 40) * 50).astype(np.uint16)
    rgba = np.concatenate([np.asarray(Image.open(io.BytesIO(photo(6)))), np.full((32, 40, 1), 100, np.uint8)], -1)
    grey, alpha = io.BytesIO(), io.BytesIO()
    Image.fromarray(a16).save(grey, format="PNG")
    Image.fromarray(rgba, "RGBA").save(alpha, format="PNG")
    r = Restorer(RestoreConfig(model="-", max_pixels=1_000_000, **FAST), model=tiny_model, timings=True)
    out = r(batch([huge_png(10_000, 10_000), grey.getvalue(), alpha.getvalue()]))
    assert list(out["status"]) == ["too_large", "ok", "ok"], list(out["error"])
    assert "max_pixels 1000000" in out["error"][0]
    assert list(out["notes"]) == [None, "16-bit samples scaled to 8-bit", "alpha composited over white"]
    with pytest.raises(ConfigError, match="restore.max_pixels"):
        RestoreConfig(max_pixels=0)


def test_output_names_stay_distinct():
    from pipelines.restore import output_names

    names = output_names(["x.jpg", "x.png", "X.webp", "sub/y.jpg", "z.tif"])
    assert names == {"x.jpg": "x.jpg.png", "x.png": "x.png", "X.webp": "X.webp.png", "sub/y.jpg": "sub/y.png",
                     "z.tif": "z.png"}


def test_restore_cli_refuses_before_ray(tmp_path, capsys):
    from pipelines.restore import main

    src = tmp_path / "in"
    src.mkdir()
    (src / "a.png").write_bytes(photo(4))
    for output in (src, src / "restored"):
        rc = main(["--input", str(src), "--output", str(output), f"restore.model={tmp_path}", "tracking.enabled=false"])
        assert rc == 2 and "inside --input" in capsys.readouterr().err
    assert sorted(p.name for p in src.iterdir()) == ["a.png"]
    rc = main(["--input", str(src), "--output", str(tmp_path / "out"), f"restore.model={tmp_path / 'missing'}",
               "tracking.enabled=false"])
    assert rc == 2 and "no checkpoint folder" in capsys.readouterr().err
    # a flag of the old command line names the override that replaced it; `trained` needs a pipeline run
    with pytest.raises(SystemExit) as e:
        main(["--input", str(src), "--output", str(tmp_path / "out"), "--steps", "2"])
    assert e.value.code == 2 and "restore.sampler.num_steps=<value>" in capsys.readouterr().err
    rc = main(["--input", str(src), "--output", str(tmp_path / "out"), "--config", str(ROOT / "configs/demo.yaml")])
    assert rc == 2 and "restore.model = 'trained' is not allowed here" in capsys.readouterr().err


def test_registered_pyfunc_model_restores_through_mlflow(checkpoint, tmp_path, monkeypatch):
    """The registered model is an MLflow pyfunc with a signature: `load_model("models:/...@champion")
    .predict(df)` gives exactly the Restorer's restoration of the same image."""
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient

    from catalog.config import to_dict
    from stages.restore_pyfunc import save_pyfunc

    options = to_dict(RestoreConfig(model="-", device="cpu", **dict(FAST, min_size=128, sampler=SamplerConfig(num_steps=2))))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    run_id = client.create_run(exp).info.run_id
    # recorded as a model registered before `resources:` was: its Ray keys load (and are unused) in a pyfunc
    registered = {k: v for k, v in options.items() if k != "resources"} | {"actors": 1, "num_gpus_per_actor": 1.0}
    saved = save_pyfunc(checkpoint, tmp_path / "pyfunc", registered)
    assert (saved / "MLmodel").is_file() and not list(saved.rglob("*.pkl"))  # models from code: nothing unpickled
    client.log_artifacts(run_id, str(saved), "model")
    client.create_registered_model("supir-test")
    version = client.create_model_version("supir-test", f"{client.get_run(run_id).info.artifact_uri}/model", run_id)
    client.set_registered_model_alias("supir-test", "champion", version.version)

    image = photo(5, (64, 48))
    previous = mlflow.get_tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # set_tracking_uri writes the variable: undone at teardown
    mlflow.set_tracking_uri(uri)
    try:
        model = mlflow.pyfunc.load_model("models:/supir-test@champion")
        out = model.predict(pd.DataFrame({"image": [image], "caption": ["a photo"]}))
    finally:
        mlflow.set_tracking_uri(previous)
    assert [c.name for c in model.metadata.get_input_schema().inputs] == ["image", "caption"]
    assert list(out.columns) == ["restored", "width", "height"] and (out["width"][0], out["height"][0]) == (64, 48)

    import hashlib

    from catalog.resources import Resources

    direct = Restorer(RestoreConfig(**{**options, "model": str(checkpoint), "sampler": SamplerConfig(num_steps=2),
                                       "tiling": TilingConfig(), "resources": Resources(**options["resources"])}))
    expected = direct.restore(Image.open(io.BytesIO(image)).convert("RGB"), hashlib.sha256(image).hexdigest()[:16],
                              "a photo")
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(out["restored"][0]))), np.asarray(expected))


def test_color_fix_reference_lq_takes_the_inputs_channel_statistics(tiny_model):
    """adain against the LQ: each channel of the result has the (bicubic-resized) LQ's mean."""
    img = Image.open(io.BytesIO(photo(3, size=(64, 64)))).convert("RGB")  # 64 px: no resize on either side
    want = np.asarray(img, dtype=np.float64).mean(axis=(0, 1))
    got = {}
    for ref in ("lq", "stage1"):
        cfg = RestoreConfig(model="-", color_fix="adain", color_fix_reference=ref, **FAST)
        got[ref] = np.asarray(Restorer(cfg, model=tiny_model).restore(img, "k"), dtype=np.float64).mean(axis=(0, 1))
    err = {k: float(np.abs(v - want).max()) for k, v in got.items()}
    assert err["lq"] < 3.0  # up to clipping to [0, 255] (adain gives the LQ's mean before it)
    assert err["stage1"] > 3 * err["lq"]  # the random tiny VAE's round trip shifts colour
    with pytest.raises(ConfigError, match="restore.color_fix_reference"):
        RestoreConfig(model="-", color_fix_reference="hq")
