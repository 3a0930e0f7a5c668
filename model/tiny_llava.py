"""Build a tiny random-init LLaVA offline and save it like a hub checkpoint.

The folder it writes has the layout of ``llava-hf/llava-1.5-7b-hf`` (config.json, safetensors,
generation_config.json, tokenizer files, preprocessor and processor config with the chat
template), so tests and benchmarks load it through exactly the path a real model takes:
``AutoProcessor.from_pretrained(folder)`` + ``AutoModelForImageTextToText.from_pretrained(folder)``.

Nothing is downloaded: the tokenizer is a byte-level BPE trained in-process on a few sentences,
the vision tower is a tiny CLIP, the language model a tiny Llama, all randomly initialised from
a seed. Random weights generate gibberish tokens; that is all the tests need.

    python -m model.tiny_llava /tmp/tiny-llava [--size small]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    GenerationConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

# llava-hf/llava-1.5-*-hf's chat template: "USER: <image>\n{text} ASSISTANT:"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' ' }}{% endfor %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]

CORPUS = [
    "Describe this image and its style in a very detailed manner.",
    "USER: ASSISTANT: A photograph of a red flower in a green meadow under a blue sky.",
    "The image shows a bridge over a river at sunset, with warm orange light and long shadows.",
    "A close-up macro photo of a dragonfly on a leaf, shallow depth of field, sharp details.",
    "Storm clouds over the sea; dramatic, high contrast, cinematic color grading.",
    "Friends laughing on a mountain trail, natural light, candid style, 35mm film look.",
    "A glass of red wine on a wooden table, soft bokeh background, studio lighting.",
    "Raindrops on a window, blurred city lights behind, moody blue tones.",
]

# (vision hidden, vision layers, image side, text hidden, text layers, heads)
SIZES = {
    "tiny": {"v_hidden": 32, "v_layers": 2, "image_side": 32, "t_hidden": 64, "t_layers": 2, "heads": 4},
    "small": {"v_hidden": 128, "v_layers": 4, "image_side": 64, "t_hidden": 256, "t_layers": 4, "heads": 8},
}
PATCH = 8


def build_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE (any text encodes) with Llama's special tokens and LLaVA's <image>."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    bos = tok.token_to_id("<s>")
    # Llama prepends BOS to every sequence
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens=["<image>"],
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
    )


def llava_7b_config(vocab_size: int = 32064, image_token_index: int = 32000, narrow: bool = False):
    """LlavaConfig of llava-hf/llava-1.5-7b-hf's shape: CLIP ViT-L/14 at 336 px (24 layers, 1024
    wide), a 2-layer GELU projector, Llama-7B (32 layers, 4096 wide, 11008 MLP, 32 heads).
    ``narrow`` (bench/gpu.py --tiny): the same processor geometry (336 px, patch 14, 576 image tokens) with
    widths and depths shrunk, so that it runs in seconds on a CPU."""
    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
    text = LlamaConfig(vocab_size=vocab_size, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                       rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if narrow:
        vision = CLIPVisionConfig(**{**vision.to_dict(), "hidden_size": 32, "intermediate_size": 64,
                                     "num_hidden_layers": 2, "num_attention_heads": 2})
        text = LlamaConfig(**{**text.to_dict(), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                              "num_attention_heads": 4, "num_key_value_heads": 4})
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_token_index,
                       image_seq_length=576, vision_feature_layer=-2, vision_feature_select_strategy="default",
                       projector_hidden_act="gelu")


def build_tiny_llava(folder: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write a random-init LLaVA (processor + model + generation config) to ``folder``."""
    s = SIZES[size]
    folder = Path(folder)
    tokenizer = build_tokenizer()
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    num_patches = (s["image_side"] // PATCH) ** 2

    vision = CLIPVisionConfig(
        hidden_size=s["v_hidden"],
        intermediate_size=4 * s["v_hidden"],
        num_hidden_layers=s["v_layers"],
        num_attention_heads=max(2, s["heads"] // 2),
        image_size=s["image_side"],
        patch_size=PATCH,
        projection_dim=s["v_hidden"],
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=s["t_hidden"],
        intermediate_size=2 * s["t_hidden"],
        num_hidden_layers=s["t_layers"],
        num_attention_heads=s["heads"],
        num_key_value_heads=s["heads"] // 2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_id,
        image_seq_length=num_patches,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",  # drop CLS, as llava-1.5
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config).eval()
    # Random weights may pick any token; never the image placeholder or padding.
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        suppress_tokens=[image_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id,
                         tokenizer.unk_token_id],
    )

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": s["image_side"]},
        crop_size={"height": s["image_side"], "width": s["image_side"]},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token
        chat_template=CHAT_TEMPLATE,
    )
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(build_tiny_llava(args.folder, args.size, args.seed))
