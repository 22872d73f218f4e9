"""The small Whisper ASR model, trained on PAL-Synth's espeak-ng speech with the shared BPE tokenizer."""

from __future__ import annotations

import re
from pathlib import Path

import jiwer
import numpy as np
import torch
from datasets import Dataset
from torch import nn
from tqdm.auto import tqdm
from transformers import (
    GenerationConfig,
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

SAMPLING_RATE, CHUNK_SECONDS, NUM_MEL_BINS = 16000, 10, 80
WHISPER_SIZE = {"d_model": 192, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4}
MAX_LABEL_TOKENS = 64
BATCH_SIZE, LEARNING_RATE = 8, 1.5e-3
CTC_WEIGHT = 0.5
FRAMES_PER_SECOND = 50  # encoder frames after Whisper's stride-2 convolution
DIGITS = {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "oh"}


def speech_rows(dataset: Dataset) -> Dataset:
    """The split's rows with a transcript (espeak-ng speech)."""
    return dataset.filter(lambda transcript: bool(transcript), input_columns="transcript")


def normalize(text: str) -> str:
    """Lower-cases and keeps words only, for WER."""
    return " ".join(re.findall(r"[\w']+", text.lower()))


def is_digit_string(text: str) -> bool:
    """Whether a transcript is a spoken digit string ("four two seven")."""
    words = normalize(text).split()
    return bool(words) and set(words) <= DIGITS


class WhisperWithCtc(nn.Module):
    """
    Training-time wrapper: Whisper's decoder loss plus an auxiliary CTC loss on the encoder output (through a linear
    head that is dropped afterwards). CTC makes the encoder learn where the words are within a few hundred steps,
    which attention alone does not on this budget; the saved checkpoint is the plain `WhisperForConditionalGeneration`.
    """

    def __init__(self, model: WhisperForConditionalGeneration, blank_id: int):
        super().__init__()
        self.model = model
        self.ctc_head = nn.Linear(model.config.d_model, model.config.vocab_size)
        self.blank_id = blank_id

    def forward(self, input_features: torch.Tensor, labels: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        output = self.model(input_features=input_features, labels=labels)
        log_probs = self.ctc_head(output.encoder_last_hidden_state).log_softmax(-1).transpose(0, 1)
        targets = labels.masked_fill(labels == self.model.config.eos_token_id, -100)
        ctc = nn.functional.ctc_loss(
            log_probs,
            targets[targets != -100],
            frames,
            (targets != -100).sum(-1),
            blank=self.blank_id,
            zero_infinity=True,
        )
        return output.loss + CTC_WEIGHT * ctc


def encoder_frames(clip: np.ndarray, config: WhisperConfig) -> int:
    """Encoder frames that hold the clip (the rest of the window is padding)."""
    return min(len(clip) * FRAMES_PER_SECOND // SAMPLING_RATE + 1, config.max_source_positions)


def whisper_config(tokenizer: PreTrainedTokenizerFast) -> WhisperConfig:
    """A small Whisper (10 s windows, 80 mels) whose decoder speaks `tokenizer` (bos starts, eos ends)."""
    return WhisperConfig(
        vocab_size=len(tokenizer),
        num_mel_bins=NUM_MEL_BINS,
        max_source_positions=CHUNK_SECONDS * 50,
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
    """Log-mel features `(N, 80, 1000)` of 16 kHz clips, stored as float16 to halve memory."""
    chunks = [clips[start : start + 64] for start in range(0, len(clips), 64)]
    return torch.cat(
        [
            extractor(chunk, sampling_rate=SAMPLING_RATE, return_tensors="pt").input_features.half()
            for chunk in tqdm(chunks, desc="Whisper features", unit="batch")
        ]
    )


@torch.no_grad()
def held_out_loss(model: WhisperForConditionalGeneration, inputs: torch.Tensor, labels: list[list[int]]) -> float:
    """Mean per-token cross-entropy on held-out clips."""
    model.eval()
    losses, counts = [], []
    for start in range(0, len(labels), BATCH_SIZE):
        batch_labels = pad_labels(labels[start : start + BATCH_SIZE])
        loss = model(input_features=inputs[start : start + BATCH_SIZE].float(), labels=batch_labels).loss
        losses.append(loss.item() * (batch_labels != -100).sum().item())
        counts.append((batch_labels != -100).sum().item())
    return sum(losses) / sum(counts)


@torch.no_grad()
def transcribe(
    model: WhisperForConditionalGeneration, inputs: torch.Tensor, tokenizer: PreTrainedTokenizerFast
) -> list[str]:
    """Greedy transcripts of `inputs` with the stock `generate`."""
    model.eval()
    texts = []
    for start in range(0, len(inputs), 32):
        output = model.generate(input_features=inputs[start : start + 32].float(), max_new_tokens=MAX_LABEL_TOKENS)
        texts.extend(tokenizer.batch_decode(output, skip_special_tokens=True))
    return texts


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER of normalised texts (1.0 for an empty reference set)."""
    if not references:
        return float("nan")
    return float(jiwer.wer([normalize(text) for text in references], [normalize(text) or "-" for text in hypotheses]))


def asr_metrics(
    model: WhisperForConditionalGeneration,
    inputs: torch.Tensor,
    transcripts: list[str],
    labels: list[list[int]],
    tokenizer: PreTrainedTokenizerFast,
) -> dict:
    """Held-out loss, WER on all speech and WER on digit strings."""
    hypotheses = transcribe(model, inputs, tokenizer)
    digits = [index for index, text in enumerate(transcripts) if is_digit_string(text)]
    return {
        "loss": held_out_loss(model, inputs, labels),
        "wer": word_error_rate(transcripts, hypotheses),
        "digit_wer": word_error_rate([transcripts[i] for i in digits], [hypotheses[i] for i in digits]),
        "examples": [{"reference": ref, "hypothesis": hyp} for ref, hyp in list(zip(transcripts, hypotheses))[:3]],
    }


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
    Trains the small Whisper for ASR on the rows with a transcript and saves it, with its feature extractor
    (10 s windows, 80 mels) and `tokenizer`, to `out_dir`.

    Returns:
        Held-out WER (all speech and digit strings) and per-token loss of the trained and untrained model, the
        unigram per-token perplexity on the same labels, and the step count.
    """
    torch.manual_seed(seed)
    extractor = WhisperFeatureExtractor(
        feature_size=NUM_MEL_BINS, sampling_rate=SAMPLING_RATE, chunk_length=CHUNK_SECONDS
    )
    config = whisper_config(tokenizer)
    train, held_out = speech_rows(train), speech_rows(held_out)
    train_clips = decode_audio(train, SAMPLING_RATE, "Whisper train audio")
    train_frames = torch.tensor([encoder_frames(clip, config) for clip in train_clips])
    train_inputs = features(train_clips, extractor)
    eval_inputs = features(decode_audio(held_out, SAMPLING_RATE, "Whisper held-out audio"), extractor)
    train_labels = encode_labels(list(train["transcript"]), tokenizer, config.eos_token_id)
    eval_transcripts = list(held_out["transcript"])
    eval_labels = encode_labels(eval_transcripts, tokenizer, config.eos_token_id)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        max_new_tokens=MAX_LABEL_TOKENS,
    )

    def next_batch(step: int) -> dict:
        rows = seeded_generator(seed, 3, step).choice(len(train_labels), size=BATCH_SIZE, replace=False)
        labels = pad_labels([train_labels[i] for i in rows])
        return {"input_features": train_inputs[rows].float(), "labels": labels, "frames": train_frames[rows]}

    untrained = asr_metrics(model, eval_inputs, eval_transcripts, eval_labels, tokenizer)
    stats = train_for_budget(
        WhisperWithCtc(model, blank_id=config.pad_token_id),
        next_batch,
        budget_seconds=budget_seconds,
        max_steps=max_steps,
        learning_rate=LEARNING_RATE,
        desc="Whisper",
        compute_loss=lambda trainee, batch: trainee(**batch),
    )
    trained = asr_metrics(model, eval_inputs, eval_transcripts, eval_labels, tokenizer)
    log_probs = unigram_log_probs(train_labels, len(tokenizer))
    metrics = {
        "held_out_wer": trained["wer"],
        "held_out_digit_wer": trained["digit_wer"],
        "untrained_wer": untrained["wer"],
        "untrained_digit_wer": untrained["digit_wer"],
        "held_out_loss": trained["loss"],
        "untrained_loss": untrained["loss"],
        "held_out_perplexity": float(np.exp(trained["loss"])),
        "unigram_perplexity": unigram_perplexity(log_probs, eval_labels),
        "train_clips": len(train_labels),
        "held_out_clips": len(eval_labels),
        "parameters": model.num_parameters(),
        **stats,
        "examples": trained["examples"],
    }
    model.save_pretrained(out_dir)
    extractor.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    tqdm.write(
        f"Whisper: held-out WER {metrics['held_out_wer']:.3f}, digits {metrics['held_out_digit_wer']:.3f} (untrained "
        f"{metrics['untrained_wer']:.3f}); per-token perplexity {metrics['held_out_perplexity']:.2f} (unigram "
        f"{metrics['unigram_perplexity']:.1f}) after {stats['steps']} steps"
    )
    return metrics
