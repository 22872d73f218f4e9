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
NUM_MELS, WINDOW_SECONDS = 32, 5
MAX_CAPTION_TOKENS, PROJECTION_DIM = 64, 128
BATCH_SIZE, LEARNING_RATE = 16, 1e-3
NUM_CANDIDATES = 10
FEATURE_CHUNK = 32  # clips per feature worker task
TAG_WEIGHT = 1.0


def clap_config(tokenizer: PreTrainedTokenizerFast) -> ClapConfig:
    """
    A small, unfused CLAP whose text tower reads `tokenizer`: the prepended bos plays RoBERTa's `<s>` (the pooled
    token), and positions start after the pad id as in RoBERTa. The audio tower folds a 5 s window of 32 mels into a
    128×128 image (a quarter of the tokens of spec size 256: ~3.5× cheaper steps) and has no patch layer norm, which
    would normalise away each patch's loudness.
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
            "spec_size": 128,
            "num_mel_bins": NUM_MELS,
            "window_size": 4,
            "enable_fusion": False,
            "enable_patch_layer_norm": False,
            "hidden_size": audio_hidden,
            **AUDIO_SIZE,
        },
        projection_dim=PROJECTION_DIM,
    )


@functools.cache
def clap_feature_extractor() -> ClapFeatureExtractor:
    """48 kHz, 5 s windows, zero padding of shorter clips (one per process); `rand_trunc` is the unfused mode."""
    return ClapFeatureExtractor(
        feature_size=NUM_MELS,
        sampling_rate=SAMPLING_RATE,
        max_length_s=WINDOW_SECONDS,
        truncation="rand_trunc",
        padding="pad",
    )


def _featurize_chunk(clips: list[np.ndarray], rate: int) -> np.ndarray:
    """
    Worker: the processor's CLAP features `(len(clips), 1, 501, NUM_MELS)` of the first window of clips at `rate`,
    in float16 (a fixed window: the extractor would crop longer clips at random, unseeded, in every worker).
    """
    extractor = clap_feature_extractor()
    windows = [resample(clip, rate, SAMPLING_RATE)[: extractor.nb_max_samples] for clip in clips]
    return ClapWindows.featurize(extractor, windows, extractor.nb_max_samples)[0].astype(np.float16)


def features(clips: list[np.ndarray], rate: int) -> torch.Tensor:
    """
    Mel features `(N, 1, 501, NUM_MELS)` of clips at `rate` (their first 5 s window), in float16, computed exactly
    as `PalProcessor` computes them for PAL, in one process per CPU core.
    """
    chunks = [clips[start : start + FEATURE_CHUNK] for start in range(0, len(clips), FEATURE_CHUNK)]
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        parts = pool.map(_featurize_chunk, chunks, [rate] * len(chunks))
        return torch.from_numpy(
            np.concatenate(list(tqdm(parts, total=len(chunks), desc="CLAP features", unit="chunk")))
        )


def init_audio_front_end(model: ClapModel) -> None:
    """
    Makes HTSAT's input frequency-aware and its patches' loudness visible. The Swin tower has no absolute position
    embedding and average-pools all tokens, so by default it cannot tell a high tone from a low one or white from
    brown noise (held-out tagging barely beats chance). Starting the input BatchNorm's per-mel bias as a ramp
    across mel bins gives every patch an absolute frequency code. Without the patch layer norm, the patch
    convolution's default init (std 0.02 at fan-in 16) would start the residual stream at ~0.1 of the input's
    scale; He init keeps it at the input's.
    """
    encoder = model.audio_model.audio_encoder
    with torch.no_grad():
        encoder.batch_norm.bias.copy_(torch.linspace(-1.0, 1.0, encoder.batch_norm.num_features))
    nn.init.kaiming_normal_(encoder.patch_embed.proj.weight, nonlinearity="linear")


class TaggingAidedClap(nn.Module):
    """
    Training-time wrapper: the symmetric contrastive (CLIP) loss, computed in float32 from CLAP's embeddings (the
    towers may run under bfloat16 autocast), plus multi-label tagging of the words of the clip's caption from the
    audio tower's pooled output through a linear head that is dropped afterwards. Real CLAP starts from an HTSAT
    pretrained on AudioSet tags; the tagging loss gives this one a similar head start. Caption words rather than event
    names also teach it the attributes the captions tell apart (pitch, voice, language, noise colour), which breaks
    the contrastive loss's early plateau sooner. The saved checkpoint is the plain `ClapModel`.
    """

    def __init__(self, model: ClapModel, num_tags: int):
        super().__init__()
        self.model = model
        self.tag_head = nn.Linear(model.config.audio_config.hidden_size, num_tags)

    def forward(self, tags: torch.Tensor, **inputs) -> torch.Tensor:
        """The training loss (a scalar) of `ClapModel` inputs for a batch of B pairs and their `(B, num_tags)` tags."""
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


def caption_word_tags(token_ids: list[list[int]], special_ids: list[int]) -> torch.Tensor:
    """Multi-hot `(N, V)` tags of which of the V distinct non-special tokens of `token_ids` each caption contains."""
    vocab = sorted({token for ids in token_ids for token in ids} - set(special_ids))
    index = {token: i for i, token in enumerate(vocab)}
    tags = torch.zeros(len(token_ids), len(vocab))
    for row, ids in enumerate(token_ids):
        tags[row, [index[token] for token in ids if token in index]] = 1.0
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
    tags = caption_word_tags(train_ids, tokenizer.all_special_ids)
    unique, candidates = candidate_sets(eval_captions, seed)
    unique_ids = caption_ids(unique, tokenizer)
    unique_texts = tokenizer.pad({"input_ids": unique_ids}, return_tensors="pt")
    model = ClapModel(clap_config(tokenizer))
    init_audio_front_end(model)

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
