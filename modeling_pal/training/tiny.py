"""Tiny random components (a Llama-3-style LLM and a Whisper) for recipes with `components: tiny`: smoke runs that
exercise the whole curriculum in seconds, offline."""

from __future__ import annotations

from pathlib import Path

import torch
from datasets import Dataset
from transformers import (
    ClapConfig,
    ClapFeatureExtractor,
    ClapModel,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
)

from ..data.pretrain_components import train_tokenizer

TINY_LLM = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
TINY_WHISPER = {
    "d_model": 32,
    "encoder_layers": 2,
    "decoder_layers": 1,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
}
WINDOW_SECONDS = 2


# 1 s CLAP windows of 101 mel frames; HTSAT on a 64×64 "image" with one patch merge → (64, 2, 32): 32 tokens of 128
TINY_CLAP_AUDIO = dict(
    spec_size=64,
    num_mel_bins=16,
    patch_size=4,
    patch_stride=4,
    window_size=4,
    depths=[1, 1],
    num_attention_heads=[2, 2],
    patch_embeds_hidden_size=32,
    hidden_size=64,
    projection_dim=16,
    enable_fusion=False,
)
TINY_CLAP_TEXT = dict(
    vocab_size=99,
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=32,
    projection_dim=16,
    max_position_embeddings=40,
)


def save_tiny_clap(out_dir: str | Path) -> None:
    """A tiny random `ClapModel` (weights from the current torch seed) and its 16 kHz feature extractor."""
    ClapModel(ClapConfig(text_config=TINY_CLAP_TEXT, audio_config=TINY_CLAP_AUDIO, projection_dim=16)).save_pretrained(
        out_dir
    )
    ClapFeatureExtractor(
        feature_size=16,
        sampling_rate=16000,
        hop_length=160,
        max_length_s=1,
        fft_window_size=400,
        frequency_max=8000,
        truncation="rand_trunc",
    ).save_pretrained(out_dir)


def build_tiny_components(train_split: Dataset, out_dir: str | Path, seed: int = 0) -> dict[str, str]:
    """
    Writes a tiny random `LlamaForCausalLM` (with a byte-level BPE tokenizer trained on `train_split`'s texts, Llama-3
    special and reserved tokens and chat template) to `out_dir/llm`, and a tiny random Whisper with 2-second windows
    to `out_dir/whisper`.

    Returns:
        `{"llm": path, "whisper": path}`.
    """
    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    tokenizer = train_tokenizer(train_split, vocab_size=512)
    llm = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            tie_word_embeddings=True,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **TINY_LLM,
        )
    )
    llm.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    llm.save_pretrained(out_dir / "llm")
    tokenizer.save_pretrained(out_dir / "llm")
    whisper = WhisperForConditionalGeneration(
        WhisperConfig(
            vocab_size=len(tokenizer),
            num_mel_bins=80,
            max_source_positions=WINDOW_SECONDS * 50,
            max_target_positions=32,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.bos_token_id,
            suppress_tokens=None,
            begin_suppress_tokens=None,
            **TINY_WHISPER,
        )
    )
    whisper.save_pretrained(out_dir / "whisper")
    WhisperFeatureExtractor(feature_size=80, chunk_length=WINDOW_SECONDS).save_pretrained(out_dir / "whisper")
    return {"llm": str(out_dir / "llm"), "whisper": str(out_dir / "whisper")}
