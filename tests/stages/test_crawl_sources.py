"""read_sources: every kind of source spec becomes SOURCES rows; bad specs fail naming the spec."""
from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from catalog.config import ConfigError
from catalog.schemas import SOURCES
from stages.crawl import CrawlConfig, Fetcher, read_sources


def sources(*specs: str, **kw) -> pa.Table:
    table = read_sources(CrawlConfig(sources=list(specs), **kw))
    assert table.schema == SOURCES
    assert table.column("row").to_pylist() == list(range(table.num_rows))
    return table


def test_url_lists(tmp_path):
    (tmp_path / "a.txt").write_text("# comment\nhttp://h/1.jpg\n\n  https://h/2.jpg  \nfile:///x/3.png\n")
    (tmp_path / "b.csv").write_text('url,alt_text,other\nhttp://h/4.jpg,"a cat, sitting",1\nhttp://h/5.jpg,,2\n')
    (tmp_path / "c.tsv").write_text("url\tTEXT\nhttp://h/6.jpg\ta dog\n")
    pq.write_table(pa.table({"URL": ["http://h/7.jpg", None], "caption": ["sea", "sky"]}), tmp_path / "d.parquet")

    t = sources(str(tmp_path / "a.txt"), str(tmp_path / "b.csv"))
    assert t.column("url").to_pylist() == ["http://h/1.jpg", "https://h/2.jpg", "file:///x/3.png",
                                           "http://h/4.jpg", "http://h/5.jpg"]
    assert t.column("alt_text").to_pylist() == [None, None, None, "a cat, sitting", None]
    assert t.column("source").to_pylist() == [str(tmp_path / "a.txt")] * 3 + [str(tmp_path / "b.csv")] * 2

    t = sources(str(tmp_path / "c.tsv"), alt_text_column="TEXT")
    assert t.to_pydict()["alt_text"] == ["a dog"]
    t = sources(str(tmp_path / "d.parquet"), url_column="URL", alt_text_column="caption")
    assert t.to_pydict()["url"] == ["http://h/7.jpg", ""]  # kept: it ends as bad_url, not dropped
    assert t.to_pydict()["alt_text"] == ["sea", "sky"]


def test_folders_globs_and_urls(tmp_path, photos):
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    shutil.copy(photos[0], tmp_path / "imgs" / "b.jpg")
    shutil.copy(photos[1], tmp_path / "imgs" / "sub" / "a.JPG")
    (tmp_path / "imgs" / "README.md").write_text("not an image")
    (tmp_path / "lists").mkdir()
    for i in range(2):
        (tmp_path / "lists" / f"part-{i}.txt").write_text(f"http://h/{i}.jpg\n")

    folder = sources(str(tmp_path / "imgs")).column("url").to_pylist()
    assert folder == [(tmp_path / "imgs" / "b.jpg").as_uri(), (tmp_path / "imgs" / "sub" / "a.JPG").as_uri()]
    assert sources(str(tmp_path / "imgs" / "*.jpg")).column("url").to_pylist() == folder[:1]
    assert sources(str(tmp_path / "imgs" / "**" / "*.*")).num_rows == 2  # README.md is skipped
    assert sources(str(tmp_path / "lists" / "*.txt")).column("url").to_pylist() == ["http://h/0.jpg", "http://h/1.jpg"]
    single = sources("https://h/x.jpg", folder[0], str(tmp_path / "imgs" / "b.jpg"))
    assert single.column("url").to_pylist() == ["https://h/x.jpg", folder[0], folder[0]]


def test_bad_specs_name_the_source(tmp_path):
    (tmp_path / "x.json").write_text("{}")
    (tmp_path / "nourl.csv").write_text("link,alt\nhttp://h/1.jpg,a\n")
    for spec, words in ((str(tmp_path / "missing.txt"), "no such path"),
                        (str(tmp_path / "nothing-*.txt"), "matches no file"),
                        (str(tmp_path / "x.json"), "unsupported extension"),
                        (str(tmp_path / "nourl.csv"), "no url column 'url'"),
                        ("hf:" + str(tmp_path / "no-dataset"), "Hugging Face dataset")):
        with pytest.raises(ConfigError) as e:
            read_sources(CrawlConfig(sources=[spec]))
        assert spec in str(e.value) and words in str(e.value), str(e.value)


def test_hf_datasets_with_urls_and_images(tmp_path, photos):
    datasets = pytest.importorskip("datasets")
    urls = datasets.Dataset.from_dict({"url": ["http://h/1.jpg", "http://h/2.jpg"], "alt_text": ["one", "two"]})
    urls.save_to_disk(str(tmp_path / "urls"))
    data = [p.read_bytes() for p in photos[:2]]
    images = datasets.Dataset.from_dict(
        {"image": [{"bytes": d, "path": None} for d in data], "alt_text": ["first", "second"]},
        features=datasets.Features({"image": datasets.Image(), "alt_text": datasets.Value("string")}),
    )
    datasets.DatasetDict({"train": images}).save_to_disk(str(tmp_path / "images"))
    (tmp_path / "parquet" / "data").mkdir(parents=True)
    images.to_parquet(str(tmp_path / "parquet" / "data" / "train-00000-of-00001.parquet"))

    t = sources(str(tmp_path / "urls"), "hf:" + str(tmp_path / "urls"))
    assert t.column("url").to_pylist() == ["http://h/1.jpg", "http://h/2.jpg"] * 2
    assert t.column("alt_text").to_pylist() == ["one", "two"] * 2

    t = sources(str(tmp_path / "images"), "hf:" + str(tmp_path / "parquet"))
    assert t.column("url").to_pylist()[0].startswith("hfds://")
    assert t.column("alt_text").to_pylist() == ["first", "second"] * 2
    cfg = CrawlConfig(threads=2)
    out = Fetcher(cfg)({k: np.array(v, dtype=object) for k, v in t.to_pydict().items()})
    assert list(out["status"]) == ["ok"] * 4, list(out["error"])
    assert list(out["image_id"]) == [hashlib.sha256(d).hexdigest() for d in data] * 2
    assert list(out["alt_text"]) == ["first", "second"] * 2

    bad = Fetcher(cfg)({"url": np.array([t.column("url")[0].as_py().replace("#0", "#99")], dtype=object),
                        "row": np.array([0]), "local": np.array([True])})
    assert bad["status"][0] == "bad_url" and "#99" in bad["error"][0]
