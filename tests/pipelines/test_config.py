"""Typed run config: every YAML in configs/ loads; unknown keys and bad values fail early and clearly."""
import subprocess
import sys

import pytest

from catalog.config import ConfigError, from_dict, to_dict
from pipelines.config import RunConfig, load_config
from tests.support import ROOT


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_file_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    # the resolved config round-trips through plain data (what MLflow logs as params)
    assert to_dict(from_dict(RunConfig, to_dict(cfg))) == to_dict(cfg)


def test_overrides_apply_and_validate():
    cfg = load_config(ROOT / "configs/demo.yaml", ["filter.min_side=256", "crawl.threads=3", "tracking.run_name=x"])
    assert (cfg.filter.min_side, cfg.crawl.threads, cfg.tracking.run_name) == (256, 3, "x")
    with pytest.raises(ConfigError, match=r"filter.min_side = 'big' is not allowed: expected an integer"):
        load_config(ROOT / "configs/demo.yaml", ["filter.min_side=big"])


def test_exponent_notation_is_a_float_in_overrides_and_files(tmp_path):
    # plain YAML 1.1 (yaml.safe_load) reads 2e-4 as the string '2e-4', which the lr check rejects
    cfg = load_config(ROOT / "configs/demo.yaml", ["train.encoder.lr=2e-4", "train.adaptor.lr=1E-5"])
    assert (cfg.train.encoder.lr, cfg.train.adaptor.lr) == (2e-4, 1e-5)
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  encoder:\n    lr: 3e-4\ntracking:\n  run_name: 1e\n")
    cfg = load_config(path)
    assert cfg.train.encoder.lr == 3e-4 and cfg.tracking.run_name == "1e"


@pytest.mark.parametrize(
    "data, message",
    [
        ({"filtr": {}}, r"unknown key 'filtr' in RunConfig: allowed keys are .*filter"),
        ({"filter": {"min_sid": 3}}, r"unknown key 'filter.min_sid' in filter: allowed keys are .*min_side"),
        ({"filter": {"max_aspect": 0.5}}, r"filter.max_aspect = 0.5 is not allowed: expected a number >= 1"),
        ({"filter": {"phash_distance": 99}}, r"filter.phash_distance = 99 .* \[-1, 32\]"),
        ({"stages": ["crawl", "paint"]}, r"stages = 'paint' is not allowed: expected stage names among crawl, filter"),
        ({"ray": {"num_cpus": 0}}, r"ray.num_cpus = 0"),
        ({"tracking": {"enabled": "yes"}}, r"tracking.enabled = 'yes' is not allowed: expected true or false"),
        ({"crawl": {"threads": 0}}, r"crawl.threads"),
        ({"crawl": {"timeout_s": -1}}, r"crawl.timeout_s"),
    ],
)
def test_bad_values_name_key_value_and_allowed(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(RunConfig, data)


def test_cli_reports_config_errors_before_any_work(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"lake: {tmp_path}/lake\nfilter:\n  min_side: -4\n")
    r = subprocess.run([sys.executable, str(ROOT / "pipelines/full.py"), "--config", str(bad)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "filter.min_side = -4 is not allowed" in r.stderr
    assert not (tmp_path / "lake" / "images").exists()
