"""pipelines/common.py's part reader: the rows a stage's actors get (filters, resume, the caption join),
and the identity of a model a stage loads (its cache key)."""
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from catalog.captions import caption_map
from pipelines.common import ReadPending


def _part(tmp_path, rows):
    path = tmp_path / "part-0.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def test_pairs_get_their_image_caption_where_they_have_none(tmp_path):
    """Degraded pairs carry no caption; restore and the ablations read each pair's image caption
    from `captions` (as training does); a pair's own caption (a negative's prompt) stays."""
    rows = [{"pair_id": "a", "image_id": "i1", "caption": None, "status": "ok"},
            {"pair_id": "b", "image_id": "i2", "caption": "its own", "status": "ok"},
            {"pair_id": "c", "image_id": "i3", "caption": "", "status": "ok"},
            {"pair_id": "d", "image_id": "i1", "caption": None, "status": "error"}]
    read = ReadPending(str(tmp_path), None, "pair_id", done=["c"], where=("status", "ok"),
                       fill=("caption", "image_id", {"i1": "a red door", "i2": "ignored"}))
    out = read({"path": [_part(tmp_path, rows)]}).to_pylist()
    assert [(r["pair_id"], r["caption"]) for r in out] == [("a", "a red door"), ("b", "its own")]


def test_fill_adds_the_column_when_the_part_has_none(tmp_path):
    read = ReadPending(str(tmp_path), None, "pair_id", done=[], fill=("caption", "image_id", {"i1": "x"}))
    out = read({"path": [_part(tmp_path, [{"pair_id": "a", "image_id": "i1"}, {"pair_id": "b", "image_id": "i9"}])]})
    assert out.column("caption").to_pylist() == ["x", None]


def test_caption_map_reads_ok_captions_only(tmp_path):
    from catalog.lake import Lake

    lake = Lake(str(tmp_path / "lake"))
    assert caption_map(lake) == {}
    from catalog.schemas import TABLES

    schema = TABLES["captions"]
    base = {"captioner": "alt", "prompt": "", "params": "{}", "seconds": 0.1, "new_tokens": 2, "error": None}
    rows = [{**base, "image_id": "i1", "caption": "a cat", "status": "ok"},
            {**base, "image_id": "i2", "caption": None, "status": "error", "error": "boom"}]
    lake.write_part("captions", pa.Table.from_pylist([{f.name: r.get(f.name) for f in schema} for r in rows], schema=schema))
    assert caption_map(lake) == {"i1": "a cat"}


def test_training_rows_get_their_image_caption_or_the_empty_prompt():
    """pipelines/train.py's reader: ok rows of the train split, the pair's own caption, else the image's, else ""."""
    from pipelines.train import _OkWithCaptions

    block = pa.Table.from_pylist([
        {"pair_id": "a", "image_id": "i1", "caption": None, "status": "ok"},
        {"pair_id": "b", "image_id": "i2", "caption": "own", "status": "ok"},
        {"pair_id": "c", "image_id": "i3", "caption": None, "status": "ok"},
        {"pair_id": "d", "image_id": "i1", "caption": None, "status": "error"},
        {"pair_id": "e", "image_id": "held", "caption": None, "status": "ok"}])
    out = _OkWithCaptions({"i1": "a red door"}, ["i1", "i2", "i3"])(block)
    assert out.column_names == ["pair_id", "image_id", "caption"]
    assert out.column("caption").to_pylist() == ["a red door", "own", ""]


def test_the_caption_join_lives_in_catalog_only():
    """catalog/captions.py is the one join: no stage keeps a twin, pipelines/common.py reuses it."""
    import catalog.captions
    import pipelines.common
    import stages.train_data

    assert pipelines.common.fill_missing is catalog.captions.fill_missing
    assert not hasattr(stages.train_data, "join_captions")
    t = pa.table({"image_id": ["a", "b", "c"], "caption": [None, "neg", " "]})
    out = catalog.captions.fill_missing(t, "caption", "image_id", {"a": "cat", "c": ""}, "")
    assert out.column("caption").to_pylist() == ["cat", "neg", ""]


def test_a_models_identity_follows_its_files_not_its_path(tmp_path):
    """Stages that load a model key their cache on it (pipelines.common.model_identity): the same
    files give the same identity, a file rewritten in place (a model retrained into the same
    folder) another one; a missing folder is an error naming it; runs:/ URIs are immutable."""
    import os

    from pipelines.common import folder_digest, model_identity

    model = tmp_path / "supir"
    (model / "adaptor").mkdir(parents=True)
    (model / "supir.json").write_text("{}")
    (model / "adaptor" / "model.safetensors").write_bytes(b"weights v1")
    first = model_identity(str(model))
    assert first == folder_digest(str(model)) == model_identity(f"file://{model}") and len(first) == 16
    (model / "adaptor" / "model.safetensors").write_bytes(b"weights v2")  # same size, new content
    st = os.stat(model / "adaptor" / "model.safetensors")
    os.utime(model / "adaptor" / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert model_identity(str(model)) != first
    (model / "encoder").mkdir()
    second = model_identity(str(model))
    assert model_identity(str(model)) == second  # an empty folder is not a file: unchanged listing
    (model / "encoder" / "model.safetensors").write_bytes(b"e")
    assert model_identity(str(model)) != second
    with pytest.raises(FileNotFoundError, match="nowhere"):
        model_identity(str(tmp_path / "nowhere"))
    assert model_identity("runs:/abc/model") == model_identity("runs:/abc/model") != model_identity("runs:/abd/model")
