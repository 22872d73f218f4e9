"""The small Whisper ASR model, trained on PAL-Synth's espeak-ng speech with the shared BPE tokenizer."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import jiwer
import numpy as np
import torch
from datasets import Dataset
from torch import nn
from tqdm.auto import tqdm
from transformers import (
    GenerationConfig,
    GenerationMixin,
    PreTrainedTokenizerFast,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
)

from ._pretrain_common import (
    decode_audio,
    seeded_generator,
    train_for_budget,
    unigram_log_probs,
    unigram_perplexity,
)
from ._pretrain_llm import EOS

SAMPLING_RATE, CHUNK_SECONDS, NUM_MEL_BINS = 16000, 5, 80
# A third decoder layer: with two, the decoder repeats or drops digits ("nine one nine" -> "nine nine nine nine") while
# CTC on the encoder reads them well; three cost ~9% more per step and, at 600 steps, held-out digit WER 0.24-0.28
WHISPER_SIZE = {"d_model": 192, "encoder_layers": 2, "decoder_layers": 3, "encoder_attention_heads": 4}
MAX_LABEL_TOKENS = 64
BATCH_SIZE, LEARNING_RATE = 8, 1.5e-3
CTC_WEIGHT, SEGMENT_WEIGHT, GUIDE_WEIGHT, GUIDE_WIDTH = 0.5, 1.0, 1.0, 0.2
DIGIT_SHARE = 0.8
FRAMES_PER_SECOND = 50  # encoder frames after Whisper's stride-2 convolution
DIGITS = {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "oh"}


def normalize(text: str) -> str:
    """Lower-cases and keeps words only, for WER."""
    return " ".join(re.findall(r"[\w']+", text.lower()))


def is_digit_string(text: str) -> bool:
    """Whether a transcript is a spoken digit string ("four two seven")."""
    words = normalize(text).split()
    return bool(words) and set(words) <= DIGITS


def encoder_frames(clip: np.ndarray, config: WhisperConfig) -> int:
    """Encoder frames that hold the clip (the rest of the window is padding)."""
    return min(len(clip) * FRAMES_PER_SECOND // SAMPLING_RATE + 1, config.max_source_positions)


def whisper_config(tokenizer: PreTrainedTokenizerFast) -> WhisperConfig:
    """A small Whisper (5 s windows, 80 mels) whose decoder speaks `tokenizer` (bos starts, eos ends)."""
    return WhisperConfig(
        vocab_size=len(tokenizer),
        num_mel_bins=NUM_MEL_BINS,
        max_source_positions=CHUNK_SECONDS * FRAMES_PER_SECOND,
        max_target_positions=MAX_LABEL_TOKENS + 2,
        decoder_attention_heads=WHISPER_SIZE["encoder_attention_heads"],
        encoder_ffn_dim=4 * WHISPER_SIZE["d_model"],
        decoder_ffn_dim=4 * WHISPER_SIZE["d_model"],
        bos_token_id=tokenizer.bos_token_id,
        decoder_start_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids(EOS),
        pad_token_id=tokenizer.pad_token_id,
        begin_suppress_tokens=None,
        **WHISPER_SIZE,
    )


def init_front_end(model: WhisperForConditionalGeneration) -> None:
    """
    He-initialises the encoder's two convolutions. With Whisper's default (normal, std 0.02) their output is ~20×
    smaller than the sinusoidal positions added to it, so every clip looks alike to the layers above and training
    from scratch barely starts within the budget.
    """
    for conv in (model.model.encoder.conv1, model.model.encoder.conv2):
        nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")


def encode_labels(transcripts: list[str], tokenizer: PreTrainedTokenizerFast, eos_token_id: int) -> list[list[int]]:
    """
    Transcript token ids followed by eos (the decoder start token is added by the model). Like Whisper, texts get a
    leading space, so that a word has the same token at the start as elsewhere.
    """
    texts = [" " + text.strip() for text in transcripts]
    ids = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=MAX_LABEL_TOKENS)["input_ids"]
    return [tokens + [eos_token_id] for tokens in ids]


def pad_labels(labels: list[list[int]]) -> torch.Tensor:
    """Right-pads label lists with -100."""
    padded = torch.full((len(labels), max(map(len, labels))), -100, dtype=torch.long)
    for index, tokens in enumerate(labels):
        padded[index, : len(tokens)] = torch.tensor(tokens)
    return padded


def features(clips: list[np.ndarray], extractor: WhisperFeatureExtractor) -> torch.Tensor:
    """Log-mel features `(N, 80, 100 × CHUNK_SECONDS)` of 16 kHz clips, stored as float16 to halve memory."""
    chunks = [clips[start : start + 64] for start in range(0, len(clips), 64)]
    return torch.cat(
        [
            extractor(chunk, sampling_rate=SAMPLING_RATE, return_tensors="pt").input_features.half()
            for chunk in tqdm(chunks, desc="Whisper features", unit="batch")
        ]
    )


def uniform_segment_targets(labels: torch.Tensor, frames: torch.Tensor, speech_only: torch.Tensor, num_frames: int):
    """
    Frame labels `(B, num_frames)` that split each speech-only clip's frames evenly among its tokens (a flat start,
    as in HMM training), -100 elsewhere: espeak-ng speaks at a steady rate, so most frames get the right token.

    Args:
        labels: `(B, N)` labels (eos last), -100 for padding.
        frames: `(B,)` encoder frames that hold the clip.
        speech_only: `(B,)` whether the clip is speech only.
        num_frames: encoder frames per window.
    """
    targets = torch.full((len(labels), num_frames), -100, dtype=torch.long)
    for row, (tokens, length) in enumerate(zip(labels, frames.tolist())):
        tokens = tokens[tokens >= 0][:-1]
        if speech_only[row] and len(tokens):
            targets[row, :length] = tokens[torch.arange(length) * len(tokens) // length]
    return targets


def guided_attention_penalty(
    weights: torch.Tensor, labels: torch.Tensor, frames: torch.Tensor, speech_only: torch.Tensor
) -> torch.Tensor:
    """
    Guided-attention penalty (Tachibana et al., 2018): the cross-attention mass that label `k` of `n` puts away from
    relative time `(k + 0.5) / n` of its clip (Gaussian width `GUIDE_WIDTH`) or on padding frames, for speech-only
    clips (whose words spread over the whole clip).

    Args:
        weights: `(B, N, T)` cross-attention weights (mean over heads).
        labels: `(B, N)` labels, -100 for padding.
        frames: `(B,)` encoder frames that hold the clip.
        speech_only: `(B,)` whether the clip is speech only.
    """
    valid = labels != -100
    centers = (torch.arange(labels.shape[1]) + 0.5)[None] / valid.sum(-1, keepdim=True)
    times = torch.arange(weights.shape[-1])[None, None] / frames[:, None, None]
    penalty = 1 - torch.exp(-((times - centers[..., None]) ** 2) / (2 * GUIDE_WIDTH**2))
    penalty = torch.where(times >= 1, 1.0, penalty)
    mask = valid & speech_only[:, None]
    return (weights * penalty).sum(-1)[mask].mean() if mask.any() else weights.new_zeros(())


class AlignmentAidedWhisper(nn.Module):
    """
    Training-time wrapper that makes a Whisper trained from scratch align audio and text within a few hundred
    steps: the decoder loss plus, through linear heads on the encoder output that are dropped afterwards, (1) CTC
    and (2) frame classification against `uniform_segment_targets`, and (3) `guided_attention_penalty` on each
    decoder cross-attention layer (mean over heads). The saved checkpoint is the plain
    `WhisperForConditionalGeneration`. CTC and frame classification get a head each: on one shared head they fight
    (CTC wants blank on most frames, the flat start a token on every frame) and neither learns within the budget.

    Args:
        model: the Whisper to train (in place).
        blank_id: the token id that stands for CTC's blank (one the transcripts never use).
        label_tokens: the token ids of the training transcripts: the frame heads' classes, with the blank.
    """

    def __init__(self, model: WhisperForConditionalGeneration, blank_id: int, label_tokens: list[int]):
        super().__init__()
        self.model = model
        # The frame heads score only the tokens the transcripts use (and blank): over the whole vocabulary (1220
        # tokens, ~200 of them in transcripts) each step took ~15 % longer (2 threads) for classes never targeted
        classes = sorted({*label_tokens, blank_id})
        compact = torch.full((model.config.vocab_size,), -100, dtype=torch.long)
        compact[classes] = torch.arange(len(classes))
        self.register_buffer("compact", compact, persistent=False)
        self.ctc_head = nn.Linear(model.config.d_model, len(classes))
        self.segment_head = nn.Linear(model.config.d_model, len(classes))
        self.blank_id = int(compact[blank_id])
        self.cross_attention: list[torch.Tensor] = []

    def _capture(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Recomputes a cross-attention layer's weights (mean over heads) from its own projections."""
        hidden, encoded = args[0] if args else kwargs["hidden_states"], kwargs["key_value_states"]
        split = lambda states: states.unflatten(-1, (module.num_heads, module.head_dim)).transpose(1, 2)  # noqa: E731
        scores = split(module.q_proj(hidden) * module.scaling) @ split(module.k_proj(encoded)).transpose(-1, -2)
        self.cross_attention.append(scores.softmax(-1).mean(1))

    def forward(
        self, input_features: torch.Tensor, labels: torch.Tensor, frames: torch.Tensor, speech_only: torch.Tensor
    ) -> torch.Tensor:
        layers = self.model.model.decoder.layers
        hooks = [layer.encoder_attn.register_forward_pre_hook(self._capture, with_kwargs=True) for layer in layers]
        try:
            output = self.model(input_features=input_features, labels=labels)
        finally:
            for hook in hooks:
                hook.remove()
        attention, self.cross_attention = self.cross_attention, []
        encoded = output.encoder_last_hidden_state
        frame_logits = self.ctc_head(encoded).float()
        words = (labels != -100) & (labels != self.model.config.eos_token_id)
        ctc = nn.functional.ctc_loss(
            frame_logits.log_softmax(-1).transpose(0, 1),
            self.compact[labels[words]],
            frames,
            words.sum(-1),
            blank=self.blank_id,
            zero_infinity=True,
        )
        segments = uniform_segment_targets(labels, frames, speech_only, encoded.shape[1])
        segments = torch.where(segments >= 0, self.compact[segments.clamp(min=0)], -100)
        segment = (
            nn.functional.cross_entropy(
                self.segment_head(encoded).float().flatten(0, 1), segments.flatten(), ignore_index=-100
            )
            if (segments >= 0).any()
            else frame_logits.new_zeros(())
        )
        guide = sum(guided_attention_penalty(weights.float(), labels, frames, speech_only) for weights in attention)
        return output.loss + CTC_WEIGHT * ctc + SEGMENT_WEIGHT * segment + GUIDE_WEIGHT * guide / len(layers)


@torch.no_grad()
def held_out_loss(model: WhisperForConditionalGeneration, speech: SpeechSet) -> float:
    """Mean per-token cross-entropy on held-out clips."""
    total, count = 0.0, 0
    for start in range(0, len(speech.labels), BATCH_SIZE):
        labels = pad_labels(speech.labels[start : start + BATCH_SIZE])
        loss = model(input_features=speech.inputs[start : start + BATCH_SIZE].float(), labels=labels).loss
        total, count = total + loss.item() * (labels != -100).sum().item(), count + (labels != -100).sum().item()
    return total / count


@torch.no_grad()
def transcribe(model: WhisperForConditionalGeneration, speech: SpeechSet, tokenizer) -> list[str]:
    """
    Greedy transcripts, at most a few tokens longer than the longest reference, from `GenerationMixin.generate`: this
    decoder has no task or language tokens, so Whisper's own `generate` adds nothing but its `suppress_tokens`
    arguments next to the generation config, which Transformers 5.24 logs as deprecated (same transcripts).
    """
    # A length limit (start token included), not `max_new_tokens`: next to the `max_length` that generation always
    # sets, `max_new_tokens` logs a warning on every call
    max_length = min(1 + max(map(len, speech.labels)) + 8, model.config.max_target_positions)
    texts = []
    for batch in speech.inputs.split(32):
        output = GenerationMixin.generate(model, input_features=batch.float(), max_length=max_length)
        texts.extend(tokenizer.batch_decode(output, skip_special_tokens=True))
    return texts


def word_error_rate(references: list[str], hypotheses: list[str]) -> float | None:
    """Corpus WER of normalised texts (`None` without references)."""
    if not references:
        return None
    return float(jiwer.wer([normalize(text) for text in references], [normalize(text) or "-" for text in hypotheses]))


def asr_metrics(model: WhisperForConditionalGeneration, speech: SpeechSet, tokenizer) -> dict:
    """Held-out loss, WER on all speech and WER on digit strings."""
    model.eval()
    hypotheses = transcribe(model, speech, tokenizer)
    pairs = list(zip(speech.transcripts, hypotheses))
    digits = [pair for pair, is_digits in zip(pairs, speech.digits) if is_digits]
    return {
        "loss": held_out_loss(model, speech),
        "wer": word_error_rate(*zip(*pairs)) if pairs else None,
        "digit_wer": word_error_rate(*zip(*digits)) if digits else None,
        "examples": [{"reference": reference, "hypothesis": hypothesis} for reference, hypothesis in pairs[:3]],
    }


@dataclass
class SpeechSet:
    """A split's speech clips ready for Whisper: features, frame counts, labels and row kinds."""

    inputs: torch.Tensor
    frames: torch.Tensor
    transcripts: list[str]
    labels: list[list[int]]
    speech_only: torch.Tensor
    digits: np.ndarray


def speech_set(dataset: Dataset, extractor, tokenizer: PreTrainedTokenizerFast, config: WhisperConfig, desc: str):
    """Decodes and featurises a split's rows with a transcript that fit one window (as Whisper's 30 s segments)."""
    dataset = dataset.filter(
        lambda text, seconds: bool(text) and seconds <= CHUNK_SECONDS, input_columns=["transcript", "duration"]
    )
    clips = decode_audio(dataset, SAMPLING_RATE, f"Whisper {desc} audio")
    transcripts = list(dataset["transcript"])
    return SpeechSet(
        inputs=features(clips, extractor),
        frames=torch.tensor([encoder_frames(clip, config) for clip in clips]),
        transcripts=transcripts,
        labels=encode_labels(transcripts, tokenizer, config.eos_token_id),
        speech_only=torch.tensor([events == ["speech"] for events in dataset["events"]]),
        digits=np.asarray([is_digit_string(text) for text in transcripts]),
    )


def sampling_weights(digits: np.ndarray) -> np.ndarray:
    """Row probabilities that give digit strings `DIGIT_SHARE` of each batch (when there are both kinds)."""
    if digits.all() or not digits.any():
        return np.full(len(digits), 1 / len(digits))
    return np.where(digits, DIGIT_SHARE / digits.sum(), (1 - DIGIT_SHARE) / (~digits).sum())


def train_whisper(
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
    Trains the small Whisper for ASR on the rows with a transcript (digit strings are `DIGIT_SHARE` of each batch)
    and saves it, with its feature extractor (5 s windows, 80 mels) and `tokenizer`, to `out_dir`.

    Returns:
        Held-out WER (all speech and digit strings) and per-token loss of the trained and untrained model, the
        unigram per-token perplexity on the same labels, and the step count.
    """
    torch.manual_seed(seed)
    extractor = WhisperFeatureExtractor(
        feature_size=NUM_MEL_BINS, sampling_rate=SAMPLING_RATE, chunk_length=CHUNK_SECONDS
    )
    config = whisper_config(tokenizer)
    train_set = speech_set(train, extractor, tokenizer, config, "train")
    eval_set = speech_set(held_out, extractor, tokenizer, config, "held-out")
    model = WhisperForConditionalGeneration(config)
    init_front_end(model)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        max_length=config.max_target_positions,
    )
    weights = sampling_weights(train_set.digits)

    def next_batch(step: int) -> dict:
        rows = seeded_generator(seed, 3, step).choice(len(weights), size=BATCH_SIZE, replace=False, p=weights)
        return {
            "input_features": train_set.inputs[rows].float(),
            "labels": pad_labels([train_set.labels[row] for row in rows]),
            "frames": train_set.frames[rows],
            "speech_only": train_set.speech_only[rows],
        }

    untrained = asr_metrics(model, eval_set, tokenizer)
    stats = train_for_budget(
        AlignmentAidedWhisper(model, config.pad_token_id, [token for tokens in train_set.labels for token in tokens]),
        next_batch,
        budget_seconds=budget_seconds,
        max_steps=max_steps,
        learning_rate=LEARNING_RATE,
        desc="Whisper",
        compute_loss=lambda trainee, batch: trainee(**batch),
    )
    trained = asr_metrics(model, eval_set, tokenizer)
    metrics = {
        "held_out_wer": trained["wer"],
        "held_out_digit_wer": trained["digit_wer"],
        "untrained_wer": untrained["wer"],
        "untrained_digit_wer": untrained["digit_wer"],
        "held_out_loss": trained["loss"],
        "untrained_loss": untrained["loss"],
        "held_out_perplexity": float(np.exp(trained["loss"])),
        "unigram_perplexity": unigram_perplexity(unigram_log_probs(train_set.labels, len(tokenizer)), eval_set.labels),
        "train_clips": len(train_set.labels),
        "held_out_clips": len(eval_set.labels),
        "held_out_digit_clips": int(eval_set.digits.sum()),
        "parameters": model.num_parameters(),
        **stats,
        "examples": trained["examples"],
    }
    model.save_pretrained(out_dir)
    extractor.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    tqdm.write(summary(metrics))
    return metrics


def summary(metrics: dict) -> str:
    """The log line of a Whisper pretraining run; a WER without held-out references (no digit strings) is n/a."""
    wer = {key: "n/a" if value is None else f"{value:.3f}" for key, value in metrics.items() if key.endswith("wer")}
    return (
        f"Whisper: held-out WER {wer['held_out_wer']}, on digits {wer['held_out_digit_wer']} "
        f"(untrained {wer['untrained_wer']}, {wer['untrained_digit_wer']}); per-token perplexity "
        f"{metrics['held_out_perplexity']:.2f} (unigram {metrics['unigram_perplexity']:.1f}) after "
        f"{metrics['steps']} steps"
    )
