"""Caption stage with a tiny random-init LLaVA saved to disk and loaded like a real checkpoint."""
import io
import json

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from model.tiny_llava import build_tiny_llava

from catalog.config import ConfigError, from_dict
from catalog.schemas import CAPTIONS, image_id_of
from stages.caption import (
    FALLBACK_TEMPLATE,
    SUPIR_PROMPT,
    AltTextCaptioner,
    CaptionConfig,
    Captioner,
    decode_image,
    make_captioner,
)

FAST = {"max_new_tokens": 8, "min_new_tokens": 8}  # random weights: force non-empty, fixed length


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    return str(build_tiny_llava(tmp_path_factory.mktemp("tiny-llava")))


@pytest.fixture(scope="module")
def greedy(tiny_llava):
    return Captioner(CaptionConfig(model=tiny_llava, mode="greedy", batch_size=8, **FAST))


@pytest.fixture(scope="module")
def photo_bytes(photos):
    return [p.read_bytes() for p in photos]


def batch_of(datas, alt_texts=None):
    """A Ray Data numpy batch: image_id strings, bytes as an object array."""
    ids = np.array([image_id_of(d) if d else "missing" for d in datas], dtype=object)
    data = np.empty(len(datas), dtype=object)
    data[:] = datas
    batch = {"image_id": ids, "bytes": data}
    if alt_texts is not None:
        batch["alt_text"] = np.array(alt_texts, dtype=object)
    return batch


def as_table(out):
    """Fails unless the output matches the CAPTIONS schema exactly."""
    return pa.Table.from_pydict({k: out[k].tolist() for k in CAPTIONS.names}, schema=CAPTIONS)


def test_loads_through_the_user_path_with_defaults(tiny_llava):
    cap = Captioner(CaptionConfig(model=tiny_llava))  # exactly a user's `caption.model: /path`
    assert cap.device.type == "cpu" and str(cap.dtype) == "torch.float32"
    assert cap.side == 32  # the tiny vision tower's crop size
    assert cap.text == f"USER: <image>\n{SUPIR_PROMPT} ASSISTANT:"  # llava-1.5's format
    assert cap.processor.tokenizer.padding_side == "left"
    params = json.loads(cap.params)
    assert params == {"mode": "sample", "temperature": 0.2, "top_p": 0.7, "max_new_tokens": 512,
                      "min_new_tokens": 0, "seed": 0, "image_side": 32, "dtype": "float32"}


@pytest.mark.slow
def test_default_generation_settings_run(tiny_llava, photo_bytes):
    out = Captioner(CaptionConfig(model=tiny_llava))(batch_of(photo_bytes[:1]))  # up to 512 tokens
    as_table(out)
    assert out["status"][0] in {"ok", "empty_caption"}
    assert 0 <= out["new_tokens"][0] <= 512


def test_captions_every_photo_and_keeps_the_corrupt_one(greedy, photo_bytes):
    jpeg = photo_bytes[0]
    datas = photo_bytes[:5] + [b"not an image", jpeg[: len(jpeg) // 3], None] + photo_bytes[5:]
    out = greedy(batch_of(datas))
    table = as_table(out)
    assert table.num_rows == len(datas)
    assert out["image_id"].tolist() == batch_of(datas)["image_id"].tolist()  # order kept
    bad = {5, 6, 7}
    for i in range(len(datas)):
        if i in bad:
            assert out["status"][i] == "decode_error" and out["error"][i]
            assert out["caption"][i] is None and out["new_tokens"][i] == 0
        else:
            assert out["status"][i] == "ok", out["error"][i]
            assert out["caption"][i].strip() == out["caption"][i] != ""
            assert out["new_tokens"][i] == 8 and out["seconds"][i] > 0
            assert "ASSISTANT" not in out["caption"][i]  # no echoed prompt
    assert set(out["captioner"]) == {greedy.cfg.model} and set(out["prompt"]) == {SUPIR_PROMPT}
    assert json.loads(out["params"][0])["mode"] == "greedy"


def test_batches_with_nothing_to_generate(greedy):
    out = greedy(batch_of([b"junk", b"\xff\xd8\xff"]))
    assert out["status"].tolist() == ["decode_error", "decode_error"]
    empty = greedy(batch_of([]))
    assert as_table(empty).num_rows == 0


def test_greedy_rerun_is_identical(greedy, tiny_llava, photo_bytes):
    batch = batch_of(photo_bytes[:8])
    first = greedy(batch)["caption"].tolist()
    assert greedy(batch)["caption"].tolist() == first
    fresh = Captioner(CaptionConfig(model=tiny_llava, mode="greedy", batch_size=8, **FAST))
    assert fresh(batch)["caption"].tolist() == first
    assert len(set(first)) > 1  # the image reaches the language model


def test_seeded_sampling_is_reproducible_per_image(tiny_llava, photo_bytes):
    batch = batch_of(photo_bytes[:4])
    cap = Captioner(CaptionConfig(model=tiny_llava, mode="sample", seed=7, batch_size=4, **FAST))
    first = dict(zip(*[cap(batch)[k].tolist() for k in ("image_id", "caption")], strict=True))
    again = dict(zip(*[cap(batch)[k].tolist() for k in ("image_id", "caption")], strict=True))
    assert again == first
    # a caption depends on (seed, image_id), not on the batch it lands in
    shuffled = {k: v[::-1] for k, v in batch.items()}
    out = cap(shuffled)
    assert dict(zip(out["image_id"].tolist(), out["caption"].tolist(), strict=True)) == first
    other = Captioner(CaptionConfig(model=tiny_llava, mode="sample", seed=8, batch_size=4, **FAST))
    assert other(batch)["caption"].tolist() != list(first.values())


def test_generation_failure_retries_halves_then_marks_the_row(greedy, photo_bytes, monkeypatch):
    real = greedy.generate
    poison = image_id_of(photo_bytes[2])

    def flaky(images, image_ids):
        if len(images) > 1 or image_ids[0] == poison:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(images, image_ids)

    monkeypatch.setattr(greedy, "generate", flaky)
    out = greedy(batch_of(photo_bytes[:4]))
    assert out["status"].tolist() == ["ok", "ok", "error", "ok"]
    assert "out of memory" in out["error"][2]


def test_fallback_prompt_without_chat_template(greedy, monkeypatch):
    monkeypatch.setattr(greedy.processor, "chat_template", None)
    assert greedy._prompt_text() == FALLBACK_TEMPLATE.format(prompt=SUPIR_PROMPT)


def test_alt_text_captioner(photo_bytes):
    cfg = CaptionConfig(captioner="alt-text")
    cap = make_captioner(cfg)
    assert isinstance(cap, AltTextCaptioner)
    out = cap(batch_of(photo_bytes[:3], alt_texts=["  A red flower. ", None, ""]))
    as_table(out)
    assert out["caption"].tolist() == ["A red flower.", None, None]
    assert out["status"].tolist() == ["ok", "no_alt_text", "no_alt_text"]
    assert set(out["captioner"]) == {"alt-text"}
    no_column = cap(batch_of(photo_bytes[:1]))
    assert no_column["status"].tolist() == ["no_alt_text"]


def test_decode_image_shrinks_to_the_model_side(photo_bytes):
    img = decode_image(photo_bytes[0], 336)
    assert img.mode == "RGB" and min(img.size) == 336
    png = io.BytesIO()
    Image.new("RGBA", (40, 20), (255, 0, 0, 128)).save(png, "PNG")
    small = decode_image(png.getvalue(), 336)
    assert small.mode == "RGB" and small.size == (40, 20)  # never upscaled


@pytest.mark.parametrize(
    "field, value",
    [
        ("temperature", 0.0),
        ("top_p", 1.5),
        ("mode", "beam"),
        ("captioner", "blip"),
        ("dtype", "float8"),
        ("device", "tpu"),
        ("attn_implementation", "magic"),
        ("batch_size", 0),
        ("min_new_tokens", 600),
        ("image_side", 4),
        ("model", " "),
    ],
)
def test_bad_config_value_names_the_field(field, value):
    with pytest.raises(ConfigError, match=rf"caption\.{field} = "):
        CaptionConfig(**{field: value})


@pytest.mark.parametrize("key, value", [("workers", 0), ("gpus_per_worker", -1.0), ("cpus_per_worker", 0)])
def test_bad_resources_name_the_field(key, value):
    with pytest.raises(ConfigError, match=rf"caption\.resources\.{key} = "):
        from_dict(CaptionConfig, {"resources": {key: value}}, prefix="caption")


def test_config_from_yaml_mapping():
    cfg = from_dict(CaptionConfig, {"model": "/models/llava", "mode": "greedy", "batch_size": 16})
    assert cfg.model == "/models/llava" and cfg.batch_size == 16 and cfg.temperature == 0.2
    with pytest.raises(ConfigError, match="caption.mode"):
        from_dict(CaptionConfig, {"mode": "beam"}, prefix="caption")
