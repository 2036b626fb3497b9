"""Tiny random models for tests and examples: every family in the table, built from configs in
seconds, with a small byte-level BPE tokenizer that has a ChatML chat template.

>>> from mindscope.testing import tiny_lm
>>> lm = tiny_lm("llama")
>>> lm.n_layers, lm.d_model
(4, 64)
"""
from __future__ import annotations

import functools

import torch

from .core import LM

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
          "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
_CORPUS = [
    "The quick brown fox jumps over the lazy dog. Alice met Bob in the garden.",
    "Trial 1: Do you detect an injected thought? If so, what is the injected thought about?",
    "def add(a, b):\n    return a + b\n# numbers 0 1 2 3 4 5 6 7 8 9",
    "Tell me about the ocean, the mountains, music, and bread. Yes No Ok.",
]


@functools.lru_cache(maxsize=1)
def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=384, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                   eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


@functools.lru_cache(maxsize=1)
def tiny_base_tokenizer():
    """The tiny tokenizer as a base model's: no chat template, and a BOS put before plain text
    (as Gemma's does), so chat prompts render as a plain transcript (``core.render_chat``)."""
    import copy

    from tokenizers import processors

    fast = copy.deepcopy(tiny_tokenizer())
    fast.chat_template = None
    bos = fast.bos_token
    fast.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, fast.bos_token_id)])
    return fast


def tiny_base_lm(family: str = "llama", seed: int = 0) -> LM:
    """``tiny_lm(family)`` with ``tiny_base_tokenizer()``: a model without a chat template."""
    lm = tiny_lm(family, seed)
    lm.tokenizer = tiny_base_tokenizer()
    lm.name = f"tiny-{family}-base"
    return lm


def tiny_config(family: str, vocab_size: int, **over):
    """A 4-layer, d_model-64 config of ``family``, built from its entry in the family table."""
    import transformers as tf

    from .core import FAMILIES

    if family == "gemma3":  # the text model; tiny_vlm("gemma3") builds the multimodal one
        family = "gemma3_text"
    if family not in FAMILIES or FAMILIES[family].tiny[0] in ("Gemma3Config", "Qwen2VLConfig",
                                                              "Qwen2_5_VLConfig"):
        raise ValueError(f"no tiny config for {family!r}; families: {', '.join(sorted(FAMILIES))}")
    cls_name, extra = FAMILIES[family].tiny
    ids = dict(bos_token_id=0, eos_token_id=2, pad_token_id=0)
    if cls_name == "GPT2Config":
        kw = dict(vocab_size=vocab_size, n_embd=64, n_layer=4, n_head=4, n_positions=256, **ids)
    else:
        kw = dict(**ids, vocab_size=vocab_size, hidden_size=64, num_hidden_layers=4,
                  num_attention_heads=4, intermediate_size=128, max_position_embeddings=256)
    kw.update(dict(extra))
    kw.update(over)
    return getattr(tf, cls_name)(**kw)


TINY_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "gpt2", "gpt_neox")
"""The families most tests run on (every family of the table has a tiny config)."""


def tiny_lm(family: str = "llama", seed: int = 0, dtype=torch.float32,
            attn_implementation: str = "eager", **over) -> LM:
    """A random model of ``family`` (4 layers, d_model 64) with the tiny tokenizer. Eager
    attention by default (exact reference numerics under padding)."""
    from transformers import AutoModelForCausalLM

    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    cfg = tiny_config(family, len(tok), **over)
    cfg._attn_implementation = attn_implementation
    model = AutoModelForCausalLM.from_config(cfg).to(dtype)
    model.generation_config.eos_token_id = tok.eos_token_id
    return LM.from_hf(model, tok, name=f"tiny-{family}")


IMAGE_TOKENS = ("<start_of_image>", "<end_of_image>", "<image_soft_token>")


QWEN_VL_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


@functools.lru_cache(maxsize=2)
def tiny_vlm_tokenizer(family: str = "gemma3"):
    """The tiny tokenizer plus the image tokens of ``family``: Gemma 3's (boi, eoi, image soft
    token) or Qwen2-VL's (vision start/end, image and video pads)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    marks = QWEN_VL_TOKENS if family == "qwen2_vl" else IMAGE_TOKENS
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *marks]
    trainer = trainers.BpeTrainer(vocab_size=384, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS * 4, trainer)
    extra = {} if family == "qwen2_vl" else {
        "extra_special_tokens": dict(zip(("boi_token", "eoi_token", "image_token"), IMAGE_TOKENS))}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|im_end|>",
        pad_token="<|endoftext|>", unk_token="<|endoftext|>", **extra)
    fast.chat_template = CHATML
    return fast


def tiny_vlm(family: str = "gemma3", seed: int = 0, **over) -> LM:
    """A random vision-language model with a processor: ``"gemma3"``
    (Gemma3ForConditionalGeneration: a 2-layer vision tower on 28x28 images, 4 image tokens, the
    tiny gemma3 language model) or ``"qwen2_vl"`` / ``"qwen2_5_vl"`` (Qwen2VL / Qwen2_5_VL
    ForConditionalGeneration: a 2-block vision tower on 14-pixel patches merged 2x2, images
    resized to 2x2..3x3 merged tokens; a 4-layer language model with 3-D multimodal rotary
    positions)."""
    import transformers as tf

    if family in ("qwen2_vl", "qwen2_5_vl"):
        return _tiny_qwen2_vl(seed, family, **over)
    if family != "gemma3":
        raise ValueError(f"no tiny vision-language model for {family!r} "
                         "(have: gemma3, qwen2_vl, qwen2_5_vl)")
    tok = tiny_vlm_tokenizer()
    torch.manual_seed(seed)
    boi, eoi, img = tok.convert_tokens_to_ids(list(IMAGE_TOKENS))
    text = tiny_config("gemma3_text", len(tok)).to_dict()
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=28, patch_size=14)
    cfg = tf.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                          image_token_index=img, boi_token_index=boi, eoi_token_index=eoi, **over)
    cfg._attn_implementation = "eager"
    model = tf.Gemma3ForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # HF initialises the projector to zero: every image would look alike
        w = model.model.multi_modal_projector.mm_input_projection_weight
        w.normal_(std=w.shape[0] ** -0.5)
    model.generation_config.eos_token_id = tok.eos_token_id
    from transformers.models.gemma3 import Gemma3ImageProcessorPil
    proc = tf.Gemma3Processor(image_processor=Gemma3ImageProcessorPil(
        size={"height": 28, "width": 28}), tokenizer=tok, image_seq_length=4)
    return LM.from_hf(model, tok, name=f"tiny-{family}-vlm", processor=proc)


def _tiny_qwen2_vl(seed: int = 0, family: str = "qwen2_vl", **over) -> LM:
    import transformers as tf
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil)

    tok = tiny_vlm_tokenizer("qwen2_vl")
    start, end, img, vid = tok.convert_tokens_to_ids(list(QWEN_VL_TOKENS))
    ids = dict(bos_token_id=0, eos_token_id=tok.eos_token_id, pad_token_id=0)
    text = dict(vocab_size=len(tok), hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, intermediate_size=128, max_position_embeddings=256, **ids,
                rope_parameters={"rope_type": "default", "rope_theta": 1e4,
                                 "mrope_section": [2, 3, 3]})  # head_dim 16: 8 rotary pairs
    patches = dict(patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
    if family == "qwen2_vl":
        vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, **patches)
        cfg_cls, model_cls, proc_cls = (tf.Qwen2VLConfig, tf.Qwen2VLForConditionalGeneration,
                                        tf.Qwen2VLProcessor)
    else:  # Qwen2.5-VL: windowed vision attention, full attention in block 1
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, out_hidden_size=64,
                      num_heads=2, window_size=56, fullatt_block_indexes=[1], **patches)
        cfg_cls, model_cls, proc_cls = (tf.Qwen2_5_VLConfig, tf.Qwen2_5_VLForConditionalGeneration,
                                        tf.Qwen2_5_VLProcessor)
    torch.manual_seed(seed)
    cfg = cfg_cls(text_config=text, vision_config=vision, vision_start_token_id=start,
                  vision_end_token_id=end, image_token_id=img, video_token_id=vid, **over)
    cfg._attn_implementation = "eager"
    model = model_cls(cfg).eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    # 28-pixel units (patch 14 x merge 2): 56x56 .. 84x84 pixels -> 2x2 .. 3x3 image tokens
    ip = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=84 * 84)
    proc = _images_only(proc_cls)(image_processor=ip, tokenizer=tok)
    return LM.from_hf(model, tok, name=f"tiny-{family}-vlm", processor=proc)


def _images_only(proc_cls):
    """``proc_cls`` (a Qwen-VL processor) without a video processor: transformers' video
    processors need torchvision, which mindscope does not install; images and text are
    processed by the real class."""

    class ImagesOnly(proc_cls):
        def check_argument_for_proper_class(self, name, arg):
            if name == "video_processor" and arg is None:
                return None
            return super().check_argument_for_proper_class(name, arg)
    ImagesOnly.__name__ = f"{proc_cls.__name__}ImagesOnly"
    return ImagesOnly
