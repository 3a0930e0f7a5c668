"""The lake: schema validation, atomic parts, manifests (cache), resume and rewrite."""
import pyarrow as pa
import pytest

from catalog.lake import Lake, SchemaError, StageSpec, conform, pending
from catalog.schemas import TABLES, image_id_of, pair_id_of


def _images(n, start=0):
    return pa.table({
        "url": [f"http://x/{i}.jpg" for i in range(start, start + n)],
        "row": list(range(start, start + n)),
        "status": ["ok"] * n,
        "bytes": [b"abc%d" % i for i in range(start, start + n)],
    })


def test_conform_fills_nullable_orders_and_rejects(tmp_path):
    t = conform("images", _images(3))
    assert t.schema.names == TABLES["images"].names
    assert t.column("image_id").null_count == 3
    with pytest.raises(SchemaError, match="unknown columns"):
        conform("images", _images(1).append_column("bogus", pa.array([1])))
    with pytest.raises(SchemaError, match="missing required column 'status'"):
        conform("images", _images(1).drop(["status"]))
    with pytest.raises(SchemaError, match="nulls"):
        conform("images", _images(1).set_column(2, "status", pa.array([None], pa.string())))
    with pytest.raises(SchemaError, match="is not int64"):
        conform("images", _images(1).set_column(1, "row", pa.array(["x"])))
    # extra iqa_ columns are allowed in `filtered`, cast to float64
    f = pa.table({"image_id": ["a"], "keep": [True], "iqa_piqe": [3]})
    assert conform("filtered", f).schema.field("iqa_piqe").type == pa.float64()


def test_parts_are_atomic_and_readable(tmp_path):
    lake = Lake(tmp_path / "lake")
    lake.write_part("images", _images(3))
    lake.write_part("images", _images(2, start=3))
    (tmp_path / "lake" / "images" / "part-x.parquet.123.tmp").write_bytes(b"half a file")
    assert len(lake.files("images")) == 2
    t = lake.read("images")
    assert sorted(t.column("row").to_pylist()) == [0, 1, 2, 3, 4]
    assert lake.done_keys("images", "row") == {0, 1, 2, 3, 4}
    assert lake.status_counts("images") == {"ok": 5}
    assert lake.read("captions").num_rows == 0  # a table never written reads empty with its schema


def test_manifest_cache_resume_and_fresh(tmp_path):
    lake = Lake(tmp_path / "lake")
    spec = StageSpec("crawl", "images", {"sources": "d1"}, "c1", "k1")
    assert lake.begin(spec) == "fresh"
    lake.write_part("images", _images(2))
    # killed here: same spec -> resume keeps finished parts
    assert lake.begin(spec) == "resume"
    assert lake.done_keys("images", "row") == {0, 1}
    lake.finish(spec, lake.status_counts("images"))
    assert lake.begin(spec) == "cached"
    assert lake.manifest("images")["counts"] == {"ok": 2}
    # a changed config clears the table
    spec2 = StageSpec("crawl", "images", {"sources": "d1"}, "c2", "k1")
    assert lake.begin(spec2) == "fresh"
    assert lake.files("images") == []


def test_digest_changes_with_content(tmp_path):
    lake = Lake(tmp_path / "lake")
    lake.write_part("images", _images(2))
    d1 = lake.digest("images")
    lake.write_part("images", _images(1, start=2))
    assert lake.digest("images") != d1


def test_rewrite_parts_and_pending(tmp_path):
    lake = Lake(tmp_path / "lake")
    lake.write_part("images", _images(3))
    n = lake.rewrite_parts("images", lambda t: t.set_column(t.schema.get_field_index("status"), "status", pa.array(["duplicate"] * t.num_rows)))
    assert n == 1 and lake.status_counts("images") == {"duplicate": 3}
    rows = pa.table({"row": [0, 1, 2, 3]})
    assert pending(rows, "row", {1, 3}).column("row").to_pylist() == [0, 2]


def test_lake_on_a_filesystem_uri(tmp_path):
    # any pyarrow filesystem URI: file:// here, s3:// or gs:// on a cluster
    lake = Lake(f"file://{tmp_path}/lake")
    lake.write_part("images", _images(2))
    assert lake.read("images").num_rows == 2


def test_content_keys():
    assert image_id_of(b"x") == "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"
    assert pair_id_of("a", "degraded", 0) != pair_id_of("a", "degraded", 1)
    assert len(pair_id_of("a", "negative")) == 32


def test_partitions_have_their_own_manifests_and_read_together(tmp_path):
    lake = Lake(tmp_path / "lake")
    rows = lambda kind, n: pa.table({"pair_id": [f"{kind}{i}" for i in range(n)], "image_id": ["i"] * n,
                                     "kind": [kind] * n, "status": ["ok"] * n})
    deg = StageSpec("degrade", "pairs/degraded", {}, "c1", "k")
    neg = StageSpec("negatives", "pairs/negative", {}, "c1", "k")
    assert lake.begin(deg) == "fresh"
    lake.write_part("pairs/degraded", rows("degraded", 3))
    lake.finish(deg, {"ok": 3})
    assert lake.begin(neg) == "fresh"
    lake.write_part("pairs/negative", rows("negative", 2))
    lake.finish(neg, {"ok": 2})
    # a changed negatives config clears only its own partition
    d = lake.digest("pairs")
    assert lake.begin(StageSpec("negatives", "pairs/negative", {}, "c2", "k")) == "fresh"
    assert lake.read("pairs").num_rows == 3 and lake.digest("pairs") != d
    assert lake.begin(deg) == "cached"
    assert lake.done_keys("pairs/degraded", "pair_id") == {"degraded0", "degraded1", "degraded2"}
