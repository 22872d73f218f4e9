"""The small CLAP model (HTSAT audio tower, RoBERTa-like text tower), trained contrastively on clip captions."""

from __future__ import annotations

import functools
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from torch import nn
from tqdm.auto import tqdm
from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, PreTrainedTokenizerFast

from ..processing_pal import ClapWindows, resample
from ._pretrain_common import decode_audio, seeded_generator, train_for_budget, unigram_log_probs

SAMPLING_RATE = 48000
CLIP_RATE = 16000  # PAL-Synth's rate: clips travel to the feature workers at it and are resampled there
AUDIO_SIZE = {"depths": [1, 1, 1, 1], "num_attention_heads": [2, 2, 4, 4], "patch_embeds_hidden_size": 32}
TEXT_SIZE = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 512}
MAX_CAPTION_TOKENS, PROJECTION_DIM = 64, 128
BATCH_SIZE, LEARNING_RATE = 16, 1e-3
NUM_CANDIDATES = 10
FEATURE_CHUNK = 32  # clips per feature worker task
TAG_WEIGHT = 1.0


def clap_config(tokenizer: PreTrainedTokenizerFast) -> ClapConfig:
    """
    A small, unfused CLAP (64 mels, spec size 256) whose text tower reads `tokenizer`: the prepended bos plays
    RoBERTa's `<s>` (the pooled token), and positions start after the pad id as in RoBERTa.
    """
    audio_hidden = AUDIO_SIZE["patch_embeds_hidden_size"] * 2 ** (len(AUDIO_SIZE["depths"]) - 1)
    return ClapConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "max_position_embeddings": MAX_CAPTION_TOKENS + tokenizer.pad_token_id + 2,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            **TEXT_SIZE,
        },
        audio_config={
            "spec_size": 256,
            "num_mel_bins": 64,
            "window_size": 8,
            "enable_fusion": False,
            "hidden_size": audio_hidden,
            **AUDIO_SIZE,
        },
        projection_dim=PROJECTION_DIM,
    )


@functools.cache
def clap_feature_extractor() -> ClapFeatureExtractor:
    """48 kHz, 10 s windows, random crops of longer clips, zero padding of shorter ones (one per process)."""
    return ClapFeatureExtractor(
        feature_size=64, sampling_rate=SAMPLING_RATE, max_length_s=10, truncation="rand_trunc", padding="pad"
    )


def _featurize_chunk(clips: list[np.ndarray], rate: int) -> np.ndarray:
    """Worker: the processor's CLAP features `(len(clips), 1, 1001, 64)` of clips at `rate`, in float16."""
    extractor = clap_feature_extractor()
    windows = [resample(clip, rate, SAMPLING_RATE) for clip in clips]
    return ClapWindows.featurize(extractor, windows, extractor.nb_max_samples)[0].astype(np.float16)


def features(clips: list[np.ndarray], rate: int) -> torch.Tensor:
    """
    Mel features `(N, 1, 1001, 64)` of clips at `rate` (at most one 10 s window each), in float16, computed exactly
    as `PalProcessor` computes them for PAL, in one process per CPU core.
    """
    chunks = [clips[start : start + FEATURE_CHUNK] for start in range(0, len(clips), FEATURE_CHUNK)]
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        parts = pool.map(_featurize_chunk, chunks, [rate] * len(chunks))
        return torch.from_numpy(
            np.concatenate(list(tqdm(parts, total=len(chunks), desc="CLAP features", unit="chunk")))
        )


class TaggingAidedClap(nn.Module):
    """
    Training-time wrapper: the symmetric contrastive (CLIP) loss, computed in float32 from CLAP's embeddings (the
    towers may run under bfloat16 autocast), plus multi-label tagging of the clip's events from the audio tower's
    pooled output through a linear head that is dropped afterwards. Real CLAP starts from an HTSAT pretrained on
    AudioSet tags; the tagging loss gives this one a similar head start. The saved checkpoint is the plain
    `ClapModel`.
    """

    def __init__(self, model: ClapModel, num_tags: int):
        super().__init__()
        self.model = model
        self.tag_head = nn.Linear(model.config.audio_config.hidden_size, num_tags)

    def forward(self, tags: torch.Tensor, **inputs) -> torch.Tensor:
        output = self.model(**inputs)
        text, audio = output.text_embeds.float(), output.audio_embeds.float()
        targets = torch.arange(len(text))
        per_text = text @ audio.T * self.model.logit_scale_t.exp()
        per_audio = audio @ text.T * self.model.logit_scale_a.exp()
        contrastive = (
            nn.functional.cross_entropy(per_text, targets) + nn.functional.cross_entropy(per_audio, targets)
        ) / 2
        logits = self.tag_head(output.audio_model_output.pooler_output).float()
        return contrastive + TAG_WEIGHT * nn.functional.binary_cross_entropy_with_logits(logits, tags)


def event_tags(events: list[list[str]], names: list[str]) -> torch.Tensor:
    """Multi-hot `(N, len(names))` tags of each clip's events."""
    index = {name: i for i, name in enumerate(names)}
    tags = torch.zeros(len(events), len(names))
    for row, clip_events in enumerate(events):
        tags[row, [index[name] for name in clip_events if name in index]] = 1.0
    return tags


def distinct_caption_batch(captions: list[str], rng: np.random.Generator, size: int) -> list[int]:
    """Random rows whose captions all differ, so in-batch negatives are true negatives."""
    rows, seen = [], set()
    for row in rng.permutation(len(captions)):
        if captions[row] not in seen:
            seen.add(captions[row])
            rows.append(int(row))
            if len(rows) == size:
                break
    return rows


def caption_ids(captions: list[str], tokenizer: PreTrainedTokenizerFast) -> list[list[int]]:
    """Token ids of captions, bos first (the text tower pools it), at most `MAX_CAPTION_TOKENS`."""
    return tokenizer(captions, truncation=True, max_length=MAX_CAPTION_TOKENS)["input_ids"]


def candidate_sets(captions: list[str], seed: int) -> tuple[list[str], np.ndarray]:
    """
    For each clip, its caption (column 0) plus up to `NUM_CANDIDATES - 1` other distinct held-out captions.

    Returns:
        The distinct captions and an `(N, K)` array of indices into them.
    """
    unique = sorted(set(captions))
    index = {caption: i for i, caption in enumerate(unique)}
    rng = seeded_generator(seed, 4)
    count = min(NUM_CANDIDATES, len(unique))
    rows = []
    for caption in captions:
        others = rng.permutation([i for i in range(len(unique)) if i != index[caption]])[: count - 1]
        rows.append([index[caption], *others])
    return unique, np.asarray(rows)


@torch.no_grad()
def retrieval_accuracy(model: ClapModel, inputs: torch.Tensor, texts: dict, candidates: np.ndarray) -> float:
    """Share of clips whose own caption scores highest among its candidates."""
    model.eval()
    audio = torch.cat(
        [model.get_audio_features(input_features=batch.float()).pooler_output for batch in inputs.split(32)]
    )
    text = model.get_text_features(**texts).pooler_output
    similarity = (audio @ text.T).numpy()
    scores = np.take_along_axis(similarity, candidates, axis=1)
    return float((scores.argmax(axis=1) == 0).mean())


@torch.no_grad()
def held_out_loss(model: ClapModel, inputs: torch.Tensor, token_ids: list[list[int]], tokenizer) -> float:
    """Mean symmetric contrastive loss over consecutive held-out batches."""
    model.eval()
    losses = []
    for start in range(0, len(token_ids) - 1, BATCH_SIZE):
        texts = tokenizer.pad({"input_ids": token_ids[start : start + BATCH_SIZE]}, return_tensors="pt")
        losses.append(
            model(input_features=inputs[start : start + BATCH_SIZE].float(), **texts, return_loss=True).loss.item()
        )
    return float(np.mean(losses))


def unigram_accuracy(token_ids: list[list[int]], log_probs: np.ndarray, candidates: np.ndarray, unique_ids) -> float:
    """Audio-blind baseline: pick the candidate caption with the highest mean unigram log-probability."""
    caption_scores = np.asarray([log_probs[ids].mean() for ids in unique_ids])
    return float((caption_scores[candidates].argmax(axis=1) == 0).mean())


def clap_metrics(model, inputs, token_ids, tokenizer, texts, candidates) -> dict:
    """Held-out retrieval accuracy (among `NUM_CANDIDATES`) and contrastive loss."""
    accuracy = retrieval_accuracy(model, inputs, texts, candidates)
    return {"accuracy": accuracy, "loss": held_out_loss(model, inputs, token_ids, tokenizer)}


def train_clap(
    train: Dataset,
    held_out: Dataset,
    tokenizer: PreTrainedTokenizerFast,
    out_dir: str | Path,
    *,
    budget_seconds: float,
    seed: int,
    max_steps: int | None = None,
) -> dict:
    """
    Trains the small CLAP contrastively on (clip, caption) pairs and saves it, with its feature extractor and
    `tokenizer`, to `out_dir`.

    Returns:
        Held-out caption retrieval accuracy among `NUM_CANDIDATES` and contrastive loss of the trained and
        untrained model, the accuracy of an audio-blind unigram baseline, and the step count.
    """
    torch.manual_seed(seed)
    extractor = clap_feature_extractor()
    train = train.filter(bool, input_columns="caption")
    held_out = held_out.filter(bool, input_columns="caption")
    train_captions, eval_captions = list(train["caption"]), list(held_out["caption"])
    train_ids, eval_ids = caption_ids(train_captions, tokenizer), caption_ids(eval_captions, tokenizer)
    train_inputs = features(decode_audio(train, CLIP_RATE, "CLAP train audio"), CLIP_RATE)
    eval_inputs = features(decode_audio(held_out, CLIP_RATE, "CLAP held-out audio"), CLIP_RATE)
    train_events = list(train["events"])
    tags = event_tags(train_events, sorted({name for events in train_events for name in events}))
    unique, candidates = candidate_sets(eval_captions, seed)
    unique_ids = caption_ids(unique, tokenizer)
    unique_texts = tokenizer.pad({"input_ids": unique_ids}, return_tensors="pt")
    model = ClapModel(clap_config(tokenizer))

    def next_batch(step: int) -> dict:
        rows = distinct_caption_batch(train_captions, seeded_generator(seed, 5, step), BATCH_SIZE)
        texts = tokenizer.pad({"input_ids": [train_ids[row] for row in rows]}, return_tensors="pt")
        return {"input_features": train_inputs[rows].float(), **texts, "tags": tags[rows]}

    untrained = clap_metrics(model, eval_inputs, eval_ids, tokenizer, unique_texts, candidates)
    stats = train_for_budget(
        TaggingAidedClap(model, num_tags=tags.shape[1]),
        next_batch,
        budget_seconds=budget_seconds,
        max_steps=max_steps,
        learning_rate=LEARNING_RATE,
        desc="CLAP",
        compute_loss=lambda trainee, batch: trainee(**batch),
    )
    trained = clap_metrics(model, eval_inputs, eval_ids, tokenizer, unique_texts, candidates)
    log_probs = unigram_log_probs(train_ids, len(tokenizer))
    metrics = {
        "held_out_retrieval_accuracy": trained["accuracy"],
        "untrained_retrieval_accuracy": untrained["accuracy"],
        "unigram_retrieval_accuracy": unigram_accuracy(eval_ids, log_probs, candidates, unique_ids),
        "chance_retrieval_accuracy": 1 / candidates.shape[1],
        "candidates": int(candidates.shape[1]),
        "held_out_loss": trained["loss"],
        "untrained_loss": untrained["loss"],
        "train_clips": len(train_captions),
        "held_out_clips": len(eval_captions),
        "parameters": model.num_parameters(),
        **stats,
    }
    model.save_pretrained(out_dir)
    extractor.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    tqdm.write(
        f"CLAP: held-out retrieval accuracy among {metrics['candidates']} captions "
        f"{metrics['held_out_retrieval_accuracy']:.3f} (untrained {metrics['untrained_retrieval_accuracy']:.3f}, "
        f"unigram {metrics['unigram_retrieval_accuracy']:.3f}) after {stats['steps']} steps"
    )
    return metrics
