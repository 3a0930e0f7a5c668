"""model/tiny_llava.py's full-size LLaVA config, checked against the released parameter count."""
from __future__ import annotations

import torch

from model.tiny_llava import llava_7b_config


def test_llava_7b_config_has_the_published_parameter_count():
    from transformers import LlavaForConditionalGeneration

    with torch.device("meta"):
        model = LlavaForConditionalGeneration(llava_7b_config())
    assert sum(p.numel() for p in model.parameters()) == 7_063_427_072  # llava-hf/llava-1.5-7b-hf
