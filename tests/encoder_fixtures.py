"""
Session-scoped tiny audio-encoder checkpoints of every supported family, saved as the Hub ships them (full CLAP,
AST with a classification head, wav2vec2 with a CTC head) with their feature extractors, built offline.

Import with `from encoder_fixtures import *` in a test module.
"""

import pytest
import torch
from transformers import (
    ASTConfig,
    ASTFeatureExtractor,
    ASTForAudioClassification,
    Data2VecAudioConfig,
    Data2VecAudioModel,
    HubertConfig,
    HubertModel,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForCTC,
)

from modeling_pal.training.tiny import save_tiny_clap

__all__ = ["tiny_encoder_dir"]

# 64 filterbank frames (0.655 s: 63 hops + one 25 ms frame) per window; 4×4 patches → a 4 × 16 patch grid,
# 16 tokens per window
AST = dict(
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=64,
    patch_size=4,
    frequency_stride=4,
    time_stride=4,
    max_length=64,
    num_mel_bins=16,
    num_labels=3,
)
# feature encoder: 5 × 4 × 8 = 160 samples per token (100 Hz)
WAVEFORM = dict(
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=(16, 16, 16),
    conv_kernel=(10, 3, 8),
    conv_stride=(5, 4, 8),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
)
WAVEFORM_FAMILIES = {
    "wav2vec2": (Wav2Vec2ForCTC, Wav2Vec2Config, {"vocab_size": 12, "feat_extract_norm": "group"}),
    "hubert": (HubertModel, HubertConfig, {"feat_extract_norm": "layer", "do_stable_layer_norm": True}),
    "data2vec-audio": (Data2VecAudioModel, Data2VecAudioConfig, {"num_conv_pos_embeddings": 2}),
}


def save_ast(out) -> None:
    ASTForAudioClassification(ASTConfig(**AST)).save_pretrained(out)
    ASTFeatureExtractor(num_mel_bins=16, max_length=64).save_pretrained(out)


def save_waveform(family: str, out) -> None:
    model_class, config_class, extras = WAVEFORM_FAMILIES[family]
    model_class(config_class(**{**WAVEFORM, **extras})).save_pretrained(out)
    Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(out)


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory, tiny_whisper_dir):
    """Factory: `tiny_encoder_dir(family)` → a saved tiny encoder checkpoint + feature extractor (built once)."""
    built = {"whisper": tiny_whisper_dir}

    def build(family: str) -> str:
        if family not in built:
            torch.manual_seed(0)
            out = tmp_path_factory.mktemp(f"encoder-{family}")
            if family == "clap":
                save_tiny_clap(out)
            elif family == "ast":
                save_ast(out)
            else:
                save_waveform(family, out)
            built[family] = str(out)
        return built[family]

    return build
