"""Tests for `modeling_pal.data.pretrain_components`: tiny budgets on a tiny PAL-Synth, all offline."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import time

import numpy as np
import pytest
from datasets import DatasetDict
from transformers import (
    AutoFeatureExtractor,
    AutoModelForCausalLM,
    AutoTokenizer,
    ClapFeatureExtractor,
    ClapModel,
    LlamaForCausalLM,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
)

from modeling_pal.data._pretrain_llm import SPECIAL_TOKENS
from modeling_pal.data.pretrain_components import pretrain_components
from modeling_pal.data.synth import build_pal_synth

BUDGET_SECONDS, MAX_STEPS = 45.0, 70


@pytest.fixture(scope="module")
def synth() -> DatasetDict:
    """
    A tiny PAL-Synth measured on its own training rows: held out, its speech is 3 clips, on which 70 steps are noise
    (held-out generalisation is what the default run on the full PAL-Synth reports). Here the tests check that each
    component learns what it is shown.
    """
    data = build_pal_synth(size=40, seed=0)
    return DatasetDict({"train": data["train"], "validation": data["train"]})


@pytest.fixture(scope="module")
def components(synth, tmp_path_factory):
    """Whisper and CLAP stop at `MAX_STEPS` (machine-independent); the LLM, fastest to learn, at its budget share."""
    out_dir = tmp_path_factory.mktemp("components")
    return out_dir, pretrain_components(synth, out_dir, budget_seconds=BUDGET_SECONDS, seed=0, max_steps=MAX_STEPS)


def test_llm_beats_untrained(components):
    metrics = components[1]["llm"]
    assert metrics["steps"] > 0
    assert metrics["held_out_perplexity"] < metrics["untrained_perplexity"]
    assert metrics["unigram_perplexity"] < metrics["untrained_perplexity"]


def test_whisper_beats_untrained(components):
    metrics = components[1]["whisper"]
    assert metrics["steps"] > 0 and metrics["held_out_clips"] > 0
    assert metrics["held_out_loss"] < metrics["untrained_loss"]
    assert 0 <= metrics["held_out_wer"] and 0 <= metrics["untrained_wer"]


def test_clap_beats_untrained(components):
    metrics = components[1]["clap"]
    assert metrics["steps"] > 0 and metrics["candidates"] > 1
    assert metrics["held_out_loss"] < metrics["untrained_loss"]
    assert metrics["held_out_retrieval_accuracy"] > metrics["untrained_retrieval_accuracy"]


def test_checkpoints_load_with_stock_classes(components, synth):
    out_dir = components[0]
    llm = AutoModelForCausalLM.from_pretrained(out_dir / "llm")
    assert isinstance(llm, LlamaForCausalLM) and llm.config.tie_word_embeddings
    assert llm.config.num_key_value_heads < llm.config.num_attention_heads
    tokenizer = AutoTokenizer.from_pretrained(out_dir / "llm")
    eot, end_of_text = tokenizer.convert_tokens_to_ids(["<|eot_id|>", "<|end_of_text|>"])
    assert llm.generation_config.eos_token_id == [eot, end_of_text]

    whisper = WhisperForConditionalGeneration.from_pretrained(out_dir / "whisper")
    whisper_features = AutoFeatureExtractor.from_pretrained(out_dir / "whisper")
    assert isinstance(whisper_features, WhisperFeatureExtractor)
    assert (whisper_features.feature_size, whisper_features.nb_max_frames) == (80, 500)
    assert whisper.config.max_source_positions == 250
    clip = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    inputs = whisper_features(clip, sampling_rate=16000, return_tensors="pt")
    output = whisper.generate(**inputs, max_new_tokens=4)
    assert isinstance(AutoTokenizer.from_pretrained(out_dir / "whisper").batch_decode(output)[0], str)

    clap = ClapModel.from_pretrained(out_dir / "clap")
    clap_features = AutoFeatureExtractor.from_pretrained(out_dir / "clap")
    assert isinstance(clap_features, ClapFeatureExtractor)
    assert (clap_features.sampling_rate, clap_features.padding, clap_features.truncation) == (
        48000,
        "pad",
        "rand_trunc",
    )
    features = clap_features(np.zeros(48000), sampling_rate=48000, return_tensors="pt").input_features
    assert clap.get_audio_features(input_features=features).pooler_output.shape == (1, clap.config.projection_dim)


def test_tokenizer_has_llama3_specials_and_chat_template(components):
    tokenizer = AutoTokenizer.from_pretrained(components[0] / "llm")
    special = {token.content for token in tokenizer.added_tokens_decoder.values() if token.special}
    assert set(SPECIAL_TOKENS) <= special
    assert {f"<|reserved_special_token_{index}|>" for index in range(8)} <= special
    assert tokenizer.pad_token == "<|finetune_right_pad_id|>" and tokenizer.bos_token == "<|begin_of_text|>"
    conversation = [
        {"role": "user", "content": [{"type": "audio", "text": None}, {"type": "text", "text": "What do you hear?"}]},
        {"role": "assistant", "content": "A siren."},
        {"role": "user", "content": "Which came first?"},
    ]
    rendered = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat do you hear?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nA siren.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhich came first?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    ids = tokenizer.apply_chat_template(conversation, add_generation_prompt=True)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    assert tokenizer("a siren")["input_ids"][0] == tokenizer.bos_token_id


def test_second_call_is_a_cache_hit(components, synth):
    out_dir, metrics = components
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["request"]["budget_seconds"] == BUDGET_SECONDS and manifest["request"]["seed"] == 0
    assert manifest["request"]["max_steps"] == MAX_STEPS
    weights = out_dir / "llm" / "model.safetensors"
    modified = weights.stat().st_mtime_ns
    start = time.perf_counter()
    assert pretrain_components(
        synth, out_dir, budget_seconds=BUDGET_SECONDS, seed=0, max_steps=MAX_STEPS
    ) == json.loads(json.dumps(metrics))
    assert time.perf_counter() - start < 2.0
    assert weights.stat().st_mtime_ns == modified


def test_whisper_summary_without_held_out_digit_strings():
    """A small PAL-Synth's validation split can hold no digit strings: their WER is None, and the log says n/a."""
    from modeling_pal.data._pretrain_whisper import summary

    metrics = dict(held_out_wer=0.5, held_out_digit_wer=None, untrained_wer=1.0, untrained_digit_wer=None)
    line = summary({**metrics, "held_out_perplexity": 3.0, "unigram_perplexity": 80.0, "steps": 3})
    assert "held-out WER 0.500, on digits n/a (untrained 1.000, n/a)" in line and "after 3 steps" in line
