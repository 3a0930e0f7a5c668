"""Per-sample parameter draws: frequencies match the config (chi-square), seeding, summaries."""
import json
import math
from collections import Counter

import numpy as np
import pytest
from scipy.stats import chisquare

from catalog.config import ConfigError
from catalog.schemas import pair_id_of
from degradations import RECIPES, DegradeConfig, draw_params, summarize_params
from degradations.config import SecondOrderConfig

N = 2000
P_MIN = 1e-3


def _chi2(counts: Counter, expected: dict) -> float:
    """p-value of observed category counts against expected probabilities."""
    assert set(counts) <= set(expected), f"unexpected categories {set(counts) - set(expected)}"
    keys = [k for k, p in expected.items() if p > 0]
    n = sum(counts.values())
    return chisquare([counts[k] for k in keys], [expected[k] * n for k in keys]).pvalue


@pytest.fixture(scope="module")
def draws():
    # second.prob < 1 so that the order frequency is tested too (Real-ESRGAN's default is 1)
    cfg = DegradeConfig(second=SecondOrderConfig(prob=0.7), seed=3)
    return cfg, [draw_params(cfg, pair_id_of(f"img{i}", "degraded")) for i in range(N)]


def test_kernel_type_frequencies(draws):
    cfg, ps = draws
    for tag, order in [("kernel1", cfg.first), ("kernel2", cfg.second)]:
        names, probs, sinc = order.kernel_list, order.kernel_prob, order.sinc_prob
        ks = [p[tag] for p in ps if p.get(tag) is not None]
        expected = {n: (1 - sinc) * q for n, q in zip(names, probs)} | {"sinc": sinc}
        assert _chi2(Counter(k["type"] for k in ks), expected) > P_MIN, tag
        sizes = list(range(cfg.kernel_range[0], cfg.kernel_range[1] + 1, 2))
        assert _chi2(Counter(k["size"] for k in ks), {s: 1 / len(sizes) for s in sizes}) > P_MIN
        for k in ks:
            if k["type"] == "sinc":
                assert (math.pi / 3 if k["size"] < 13 else math.pi / 5) <= k["omega"] <= math.pi
            else:
                assert order.blur_sigma[0] <= k["sigma_x"] <= order.blur_sigma[1]


def test_resize_noise_and_order_frequencies(draws):
    cfg, ps = draws
    second = [p for p in ps if p["second_order"]]
    assert _chi2(Counter(p["second_order"] for p in ps), {True: 0.7, False: 0.3}) > P_MIN
    assert _chi2(Counter(p["kernel2"] is not None for p in second),
                 {True: cfg.second.blur_prob, False: 1 - cfg.second.blur_prob}) > P_MIN
    for tag, rows, order in [("1", ps, cfg.first), ("2", second, cfg.second)]:
        probs, g, gray = order.resize_prob, order.gaussian_noise_prob, order.gray_noise_prob
        r = [p["resize" + tag] for p in rows]
        assert _chi2(Counter(x["updown"] for x in r), dict(zip(("up", "down", "keep"), probs))) > P_MIN
        assert _chi2(Counter(x["mode"] for x in r), {m: 1 / 3 for m in cfg.resize_modes}) > P_MIN
        z = [p["noise" + tag] for p in rows]
        assert _chi2(Counter(x["kind"] for x in z), {"gaussian": g, "poisson": 1 - g}) > P_MIN
        assert _chi2(Counter(x["gray"] for x in z), {True: gray, False: 1 - gray}) > P_MIN
    f = [p["final"] for p in ps]
    assert _chi2(Counter(x["order"] for x in f), {"resize_first": 0.5, "jpeg_first": 0.5}) > P_MIN
    assert _chi2(Counter(x["sinc"] is not None for x in f), {True: 0.8, False: 0.2}) > P_MIN
    q = [p["jpeg1"] for p in ps]
    assert min(q) == 30 and max(q) == 95
    assert _chi2(Counter(q), {v: 1 / 66 for v in range(30, 96)}) > P_MIN


def test_resize_factor_ranges(draws):
    cfg, ps = draws
    for p in ps:
        r = p["resize1"]
        lo, hi = {"up": (1, 1.5), "down": (0.15, 1), "keep": (1, 1)}[r["updown"]]
        assert lo <= r["factor"] <= hi


def test_same_seed_same_draws_other_pair_or_seed_differs():
    cfg = DegradeConfig()
    a = draw_params(cfg, pair_id_of("x", "degraded", 0), (900, 700))
    assert a == draw_params(cfg, pair_id_of("x", "degraded", 0), (900, 700))
    assert json.loads(json.dumps(a)) == a  # JSON-able, floats round-trip exactly

    def strip(p):
        return {k: v for k, v in p.items() if k not in ("pair_id", "seed")}

    assert strip(a) != strip(draw_params(cfg, pair_id_of("x", "degraded", 1), (900, 700)))
    assert strip(a) != strip(draw_params(DegradeConfig(seed=1), pair_id_of("x", "degraded", 0), (900, 700)))
    top, left = a["crop"]
    assert 0 <= top <= 900 - cfg.gt_size and 0 <= left <= 700 - cfg.gt_size


def test_bsrgan_draws_keep_downsampling_order():
    cfg = DegradeConfig(recipe="bsrgan")
    counts = Counter()
    for i in range(300):
        ops = [o["op"] for o in draw_params(cfg, pair_id_of(f"b{i}", "degraded"))["ops"]]
        assert ops.count("resize_to_lq") == 1 and ops[-1] == "jpeg" and ops.count("blur") == 2
        first_down = [j for j, o in enumerate(ops) if o in ("resize", "blur_nearest")]
        assert first_down and first_down[-1] < ops.index("resize_to_lq")
        counts.update(ops)
    assert 0.8 < (counts["jpeg"] - 300) / 300 < 1.0  # in-sequence JPEG with prob 0.9


def test_summarize_params(draws):
    _, ps = draws
    s = summarize_params([json.dumps(p) for p in ps[:500]] + [None])
    assert s["n"] == 500
    kinds = [k for k in s if k.startswith("kernel1.")]
    assert math.isclose(sum(s[k] for k in kinds), 1.0)
    assert math.isclose(s["final.resize_first"] + s["final.jpeg_first"], 1.0)
    assert 30 <= s["jpeg1.quality_mean"] <= 95 and all(np.isfinite(v) for v in s.values())
    b = summarize_params([draw_params(DegradeConfig(recipe="bsrgan"), pair_id_of("y", "degraded"))])
    assert b["op.blur"] == 2 and b["n"] == 1


@pytest.mark.parametrize(
    "section, key",
    [({"first": {"sinc_prob": 1.5}}, "degrade.first.sinc_prob"),
     ({"second": {"kernel_prob": [0.5, 0.5]}}, "degrade.second.kernel_prob"),
     ({"second": {"prob": -0.1}}, "degrade.second.prob"),
     ({"kernel_range": [6, 21]}, "degrade.kernel_range"), ({"gt_size": 250}, "degrade.gt_size"),
     ({"final": {"jpeg_range": [30, 120]}}, "degrade.final.jpeg_range"),
     ({"bsrgan": {"noise_range": [9, 2]}}, "degrade.bsrgan.noise_range"),
     ({"resize_modes": ["nearest"]}, "degrade.resize_modes"),
     ({"recipe": "diffbir"}, "degrade.recipe"),
     ({"sinc_prob2": 0.1}, "degrade.sinc_prob2")],  # the flat keys of the old config are refused
)
def test_config_errors_name_the_field(section, key):
    from catalog.config import from_dict

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
        from_dict(DegradeConfig, section, prefix="degrade")
    assert "allowed" in str(err.value)


def test_recipe_error_lists_the_table():
    with pytest.raises(ConfigError, match="one of realesrgan, bsrgan"):
        DegradeConfig(recipe="diffbir")
    assert list(RECIPES) == ["realesrgan", "bsrgan"]


def test_config_loads_from_yaml_mapping():
    from catalog.config import from_dict

    section = {"gt_size": 128, "recipe": "bsrgan", "first": {"jpeg_range": [40, 90]}, "second": {"prob": 0.5}}
    cfg = from_dict(DegradeConfig, section, prefix="degrade")
    assert cfg.first.jpeg_range == (40, 90) and cfg.recipe == "bsrgan" and cfg.second.prob == 0.5
    assert cfg.second.blur_sigma == (0.2, 1.5) and cfg.final.jpeg_range == (30, 95)  # untouched defaults
