"""Bad config files and values are `config error:`s that name the file, key or value, never tracebacks."""
from __future__ import annotations

import pytest

from catalog.config import ConfigError
from catalog.lake import Lake, LakeError
from pipelines.config import load_config


def test_missing_file_bad_yaml_and_duplicated_keys(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("crawl:\n  threads: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML") as e:
        load_config(bad)
    assert str(bad) in str(e.value)
    twice = tmp_path / "twice.yaml"
    twice.write_text("crawl:\n  threads: 2\nfilter:\n  min_side: 64\ncrawl:\n  retries: 0\n")
    with pytest.raises(ConfigError, match="'crawl' appears twice") as e:
        load_config(twice)
    assert "line 1" in str(e.value) and "line 5" in str(e.value)


@pytest.mark.parametrize("override, field", [("crawl.timeout_s=.inf", "crawl.timeout_s"),
                                             ("crawl.download_timeout_s=.nan", "crawl.download_timeout_s"),
                                             ("crawl.backoff_s=.inf", "crawl.backoff_s"),
                                             ("lake=''", "lake"), ("crawl.local_roots=['']", "crawl.local_roots")])
def test_values_that_would_fail_every_row_are_refused(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(None, [override])


def test_a_lake_path_that_is_a_file(tmp_path):
    f = tmp_path / "lake"
    f.write_text("not a folder")
    with pytest.raises(LakeError, match="is a file"):
        Lake(f)
    assert issubclass(LakeError, ValueError)  # the pipelines print it as a config error


def test_a_missing_crawl_source_fails_in_preflight(tmp_path):
    from types import SimpleNamespace

    from pipelines.ingest import preflight

    cfg = load_config(None, [f"crawl.sources=['{tmp_path / 'nowhere.txt'}']", "stages=[crawl]"])
    with pytest.raises(ConfigError, match="nowhere.txt"):
        preflight(SimpleNamespace(cfg=cfg))  # before any Ray call


def test_a_lake_that_cannot_be_created_is_a_lake_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(LakeError, match="cannot be created or written"):
        Lake(blocker / "lake")  # a parent that is a file (root ignores permission bits, so no chmod)
