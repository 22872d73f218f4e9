"""Session-scoped tiny components, built offline: tokenizers trained with `tokenizers`, random tiny LLMs and Whisper."""

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# evaluate and datasets write module and dataset caches under HF_HOME: keep the user's cache out of the tests
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="pal-tests-hf-home-"))
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import sharpened  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModelForCausalLM,
    GenerationConfig,
    PreTrainedTokenizerFast,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
)
from transformers.utils import logging as hf_logging  # noqa: E402

import modeling_pal  # noqa: E402

hf_logging.set_verbosity_error()

FAMILIES = ("llama", "qwen2", "qwen3", "mistral")
LLAMA3_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|finetune_right_pad_id|>",
    *[f"<|reserved_special_token_{i}|>" for i in range(8)],
]
CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "a dog barks twice in the distance while rain falls",
    "what do you hear in this audio clip?",
    "a rising chirp followed by white noise and three clicks",
    "the speaker says six zero four eight seven in english",
    "describe the sound. which event comes first? how many beeps are there?",
    "music with a major chord, slow tempo, a melody going up",
] * 20
TEXT_SIZES = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2
)
FAMILY_EXTRAS = {
    "llama": {"tie_word_embeddings": True},
    "qwen2": {"tie_word_embeddings": False},
    "qwen3": {"tie_word_embeddings": False, "head_dim": 16},
    # a short window makes the test prompts longer than it, so audio columns must survive the sliding mask
    "mistral": {"tie_word_embeddings": False, "sliding_window": 6},
}


def build_tokenizer(family: str) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on a tiny corpus; Llama gets Llama-3 specials (with reserved tokens), others ChatML."""
    specials = LLAMA3_SPECIALS if family == "llama" else CHATML_SPECIALS
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False)
    backend.train_from_iterator(CORPUS, trainer)
    if family == "llama":
        return PreTrainedTokenizerFast(
            tokenizer_object=backend,
            bos_token="<|begin_of_text|>",
            eos_token="<|eot_id|>",
            chat_template=LLAMA3_TEMPLATE,
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHATML_TEMPLATE
    )


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory):
    """Factory: `tiny_llm_dir(family)` → a saved tiny causal LM + tokenizer of that family (built once)."""
    built = {}

    def build(family: str) -> str:
        if family not in built:
            torch.manual_seed(0)
            tokenizer = build_tokenizer(family)
            config = AutoConfig.for_model(
                family,
                vocab_size=len(tokenizer),
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                **TEXT_SIZES,
                **FAMILY_EXTRAS[family],
            )
            model = AutoModelForCausalLM.from_config(config)
            model.generation_config = GenerationConfig(
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, max_length=64
            )
            out = tmp_path_factory.mktemp(f"llm-{family}")
            model.save_pretrained(out)
            tokenizer.save_pretrained(out)
            built[family] = str(out)
        return built[family]

    return build


@pytest.fixture(scope="session")
def tiny_whisper_dir(tmp_path_factory) -> str:
    """A tiny `WhisperForConditionalGeneration` with 2 s windows (200 mel frames → 100 encoder tokens)."""
    torch.manual_seed(0)
    config = WhisperConfig(
        vocab_size=64,
        d_model=32,
        encoder_layers=2,
        decoder_layers=1,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_mel_bins=80,
        max_source_positions=100,
        max_target_positions=32,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        suppress_tokens=None,
        begin_suppress_tokens=None,
    )
    out = tmp_path_factory.mktemp("whisper")
    WhisperForConditionalGeneration(config).save_pretrained(out)
    WhisperFeatureExtractor(feature_size=80, chunk_length=2).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def pal_model(tiny_llm_dir, tiny_whisper_dir):
    """Factory: `pal_model(family, integration, **config_overrides)` → a cached PAL in eval mode (Whisper encoder)."""
    built = {}

    def build(family: str = "llama", integration: str = "lal", **overrides):
        key = (family, integration, tuple(sorted(overrides.items())))
        if key not in built:
            torch.manual_seed(0)
            if integration != "plits":
                overrides.setdefault("lal_start_layer", 2)
            built[key] = modeling_pal.PalForConditionalGeneration.from_components(
                tiny_llm_dir(family), {"whisper": tiny_whisper_dir}, integration=integration, **overrides
            ).eval()
        return built[key]

    return build


@pytest.fixture(scope="session")
def saved_pal_checkpoint(pal_model, tiny_llm_dir, tiny_whisper_dir, tmp_path_factory):
    """Factory: `saved_pal_checkpoint(integration, sharpen=False)` → a folder holding a Llama PAL (Whisper encoder),
    `helpers.sharpened` if asked, and its processor, saved once per session (tests only read it)."""
    saved = {}

    def save(integration: str = "lal", sharpen: bool = False) -> str:
        if (integration, sharpen) not in saved:
            model = pal_model("llama", integration)
            model = sharpened(model) if sharpen else model
            processor = modeling_pal.PalProcessor.from_components(
                tiny_llm_dir("llama"), {"whisper": tiny_whisper_dir}, config=model.config
            )
            folder = tmp_path_factory.mktemp(f"pal-{integration}{'-sharpened' if sharpen else ''}")
            model.save_pretrained(folder)
            processor.save_pretrained(folder)
            saved[integration, sharpen] = str(folder)
        return saved[integration, sharpen]

    return save


@pytest.fixture
def rng():
    return np.random.default_rng(0)
