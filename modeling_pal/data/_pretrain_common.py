"""Shared helpers for `pretrain_components`: the budgeted training loop, audio decoding and unigram baselines."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

import numpy as np
import torch
from datasets import Audio, Dataset
from tqdm.auto import tqdm

from ..processing_pal import load_audio, resample

WARMUP_STEPS = 20
MIN_LR_RATIO = 0.1


def learning_rate_at(progress: float, step: int, peak: float) -> float:
    """Linear warm-up over `WARMUP_STEPS`, then cosine decay to `MIN_LR_RATIO * peak` as `progress` goes 0 → 1."""
    warmup = min(1.0, (step + 1) / WARMUP_STEPS)
    cosine = MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return peak * warmup * cosine


def fast_bfloat16() -> bool:
    """Whether the CPU multiplies bfloat16 in hardware (AMX or AVX-512 BF16): there autocast trains ~1.7× faster."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, check, lambda: False)() for check in checks)


def train_for_budget(
    model: torch.nn.Module,
    next_batch: Callable[[int], dict],
    *,
    budget_seconds: float,
    max_steps: int | None,
    learning_rate: float,
    desc: str,
    compute_loss: Callable[[torch.nn.Module, dict], torch.Tensor] | None = None,
    bfloat16: bool | None = None,
) -> dict:
    """
    Trains `model` with fused AdamW (Trainer's default) for `budget_seconds` of wall-clock time or `max_steps`,
    whichever comes first.

    The learning-rate schedule runs on the fraction of the budget spent (of `max_steps` when given), so it always
    decays by the end. With `max_steps` and a budget that is not reached, the run is exactly reproducible; with a
    time budget only the number of steps depends on the machine.

    Args:
        model: the model, trained in place.
        next_batch: returns the keyword arguments of step `i` (deterministic in `i`).
        budget_seconds: how long to train.
        max_steps: optional step limit.
        learning_rate: the peak learning rate.
        desc: the progress bar's label.
        compute_loss: `(model, batch) -> loss`; defaults to `model(**batch).loss`.
        bfloat16: run the forward pass under bfloat16 autocast; by default where the CPU has bfloat16 matrix units
            (`fast_bfloat16`).

    Returns:
        `{"steps", "train_seconds", "final_train_loss"}` (the loss is a 20-step running mean; `None` without steps).
    """
    compute_loss = compute_loss or (lambda module, batch: module(**batch).loss)
    bfloat16 = fast_bfloat16() if bfloat16 is None else bfloat16
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=learning_rate, betas=(0.9, 0.98), weight_decay=0.01, fused=True
    )
    model.train()
    start, step, recent = time.perf_counter(), 0, []

    def progress() -> float:
        elapsed = (time.perf_counter() - start) / budget_seconds
        return max(step / max_steps, elapsed if elapsed >= 1 else 0.0) if max_steps else elapsed

    bar_format = "{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}"
    with tqdm(total=1.0, desc=desc, bar_format=bar_format) as bar:
        while (done := progress()) < 1:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate_at(done, step, learning_rate)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
                loss = compute_loss(model, next_batch(step))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            recent = (recent + [loss.item()])[-20:]
            step += 1
            bar.set_postfix(step=step, loss=f"{np.mean(recent):.3f}", refresh=False)
            bar.update(min(progress(), 1.0) - bar.n)
    model.eval()
    return {
        "steps": step,
        "train_seconds": round(time.perf_counter() - start, 1),
        "final_train_loss": float(np.mean(recent)) if recent else None,
    }


def decode_audio(dataset: Dataset, sampling_rate: int, desc: str) -> list[np.ndarray]:
    """Decodes a split's `audio` column with soundfile (no torchcodec needed) and resamples it to `sampling_rate`."""
    column = dataset.cast_column("audio", Audio(decode=False))["audio"]
    clips = []
    for value in tqdm(column, desc=desc, unit="clip"):
        samples, rate = load_audio(value)
        clips.append(resample(samples, rate, sampling_rate))
    return clips


def unigram_log_probs(token_lists: Iterable[Iterable[int]], vocab_size: int) -> np.ndarray:
    """Add-one-smoothed unigram log-probabilities over the vocabulary, counted on `token_lists`."""
    counts = np.ones(vocab_size, dtype=np.float64)
    for tokens in token_lists:
        np.add.at(counts, np.asarray(list(tokens), dtype=np.int64), 1)
    return np.log(counts / counts.sum())


def unigram_perplexity(log_probs: np.ndarray, token_lists: Iterable[Iterable[int]]) -> float:
    """Per-token perplexity of the unigram model `log_probs` on `token_lists`."""
    tokens = np.concatenate([np.asarray(list(tokens), dtype=np.int64) for tokens in token_lists])
    return float(np.exp(-log_probs[tokens].mean()))


def seeded_generator(seed: int, *salt: int) -> np.random.Generator:
    """A numpy generator for one purpose (`salt`, e.g. a component and a step) of one run (`seed`)."""
    return np.random.default_rng([seed, *salt])
