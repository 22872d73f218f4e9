"""Model inputs built by hand for the core-model tests (the processor has its own tests)."""

import numpy as np
import torch
from transformers import WhisperFeatureExtractor

from modeling_pal.configuration_pal import num_encoder_tokens, num_plits_tokens


def clip_windows(extractor: WhisperFeatureExtractor, clip: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Splits a clip into the extractor's windows: features `(W, mel, frames)` and frame masks `(W, frames)`."""
    pieces = [clip[start : start + extractor.n_samples] for start in range(0, len(clip), extractor.n_samples)]
    out = extractor(pieces, sampling_rate=16000, padding="max_length", return_attention_mask=True, return_tensors="pt")
    return out.input_features, out.attention_mask


def build_inputs(model, extractor, samples: list[list], tokenizer=None) -> dict:
    """
    `samples`: per sample a list of segments, each a list of token ids (text) or a 1-D array (a clip at 16 kHz).
    Returns left-padded model inputs for the model's single Whisper slot.
    """
    config = model.config
    settings, audio_config = config.audio_encoders[0], config.audio_configs[0]
    rows, features, masks, clips = [], [], [], []
    for segments in samples:
        ids, windows, window_masks, window_clips = [], [], [], []
        for segment in segments:
            if not isinstance(segment, np.ndarray):
                ids.extend(segment)
                continue
            feats, mask = clip_windows(extractor, segment)
            if settings["integration"] in ("plits", "hybrid"):
                tokens = num_encoder_tokens(audio_config, mask.sum(-1))
                count = sum(int(num_plits_tokens(settings, int(t), config.num_summary_tokens)) for t in tokens)
                ids.extend([config.audio_placeholder_token_id] * count)
            if settings["integration"] in ("lal", "hybrid"):
                ids.append(config.audio_token_id)
            window_clips.extend([len(set(window_clips))] * len(feats))
            windows.append(feats)
            window_masks.append(mask)
        rows.append(ids)
        features.append(torch.cat(windows) if windows else torch.zeros(0, *extractor_shape(extractor)))
        masks.append(
            torch.cat(window_masks) if window_masks else torch.zeros(0, extractor.nb_max_frames, dtype=torch.long)
        )
        clips.append(torch.tensor(window_clips, dtype=torch.long))
    return {**pad_text(rows), **pad_windows(features, masks, clips)}


def extractor_shape(extractor) -> tuple[int, int]:
    return extractor.feature_size, extractor.nb_max_frames


def pad_text(rows: list[list[int]]) -> dict:
    length = max(len(row) for row in rows)
    input_ids = torch.tensor([[0] * (length - len(row)) + row for row in rows])
    attention_mask = torch.tensor([[0] * (length - len(row)) + [1] * len(row) for row in rows])
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def pad_windows(features, masks, clips) -> dict:
    most = max(1, max(len(f) for f in features))

    def pad(tensor, value):
        shape = (most - len(tensor), *tensor.shape[1:])
        return torch.cat([tensor, torch.full(shape, value, dtype=tensor.dtype)])

    return {
        "audio_features_0": torch.stack([pad(f, 0.0) for f in features]),
        "audio_feature_mask_0": torch.stack([pad(m, 0) for m in masks]),
        "audio_window_clip_0": torch.stack([pad(c, -1) for c in clips]),
    }
