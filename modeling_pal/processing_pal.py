"""PAL processor: the LLM tokenizer plus one feature extractor per audio encoder."""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import soundfile
import soxr

MAX_CHANNELS = 8


def _decode_file(source: str | Path | bytes) -> tuple[np.ndarray, int]:
    """Decodes a file path or encoded bytes at the file's own rate: `(samples, channels)` float32 and the rate."""
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise FileNotFoundError(f"audio file not found: {source}")
    try:
        data, rate = soundfile.read(io.BytesIO(source) if isinstance(source, bytes) else source, dtype="float32")
    except Exception as error:  # soundfile raises its own LibsndfileError subclasses
        raise ValueError(f"cannot decode audio {str(source)[:80]!r}: {error}") from error
    return data, rate


def _from_mapping(value: Mapping, sampling_rate: int | None) -> tuple[object, int | None]:
    """Reads `{"array", "sampling_rate"}`, `{"path"}` or `{"bytes"}` dicts, and `datasets` `AudioDecoder`s."""
    if value.get("array") is not None:
        return value["array"], value.get("sampling_rate", sampling_rate)
    if value.get("bytes") is not None:
        return _decode_file(value["bytes"])
    if value.get("path") is not None:
        return _decode_file(value["path"])
    raise ValueError(f"audio dict has none of 'array', 'bytes' or 'path' (keys: {sorted(value)})")


def _as_samples(value: object) -> np.ndarray:
    """Validates raw samples and returns them as 1-D float32, down-mixing the channel axis (size ≤ 8) of 2-D input."""
    try:
        samples = np.asarray(value.cpu() if hasattr(value, "cpu") else value)
    except Exception as error:
        raise ValueError(f"audio is not numeric: {type(value).__name__}") from error
    if samples.dtype == object or not (np.issubdtype(samples.dtype, np.number) or samples.dtype == bool):
        raise ValueError(f"audio must be numeric, got dtype {samples.dtype}")
    if samples.ndim == 2:
        channel_axis = int(np.argmin(samples.shape))
        if samples.shape[channel_axis] > MAX_CHANNELS:
            raise ValueError(f"2-D audio needs a channel axis of size ≤ {MAX_CHANNELS}, got shape {samples.shape}")
        samples = samples.mean(axis=channel_axis)
    if samples.ndim != 1:
        raise ValueError(f"audio must be 1-D (mono) or 2-D (multi-channel), got shape {samples.shape}")
    if samples.size == 0:
        raise ValueError("audio is empty (0 samples)")
    samples = samples.astype(np.float32)
    if not np.isfinite(samples).all():
        raise ValueError("audio contains NaN or infinite values")
    return samples


def load_audio(value: object, sampling_rate: int | None = None) -> tuple[np.ndarray, int]:
    """
    Turns any supported audio value into mono float32 samples and their rate, without resampling.

    Args:
        value: a path (`str`/`Path`), encoded bytes, a 1-D/2-D array, tensor or list, a dict with `array` (+
            `sampling_rate`), `path` or `bytes`, or a `datasets` `AudioDecoder`.
        sampling_rate: the rate of raw arrays/lists/tensors (paths are decoded at the file's own rate).

    Returns:
        `(samples, rate)` with `samples` of shape `(num_samples,)`.

    Raises:
        `ValueError` naming the problem (empty, NaN/inf, non-numeric, wrong rank, undecodable, unknown rate);
        `FileNotFoundError` for a missing path.
    """
    if isinstance(value, (str, Path, bytes)):
        value, sampling_rate = _decode_file(value)
    elif isinstance(value, Mapping) or hasattr(value, "get_all_samples"):
        if hasattr(value, "get_all_samples"):  # datasets' AudioDecoder (torchcodec)
            decoded = value.get_all_samples()
            value, sampling_rate = decoded.data.numpy().T, decoded.sample_rate
        else:
            value, sampling_rate = _from_mapping(value, sampling_rate)
    if sampling_rate is None:
        raise ValueError("raw audio needs a sampling_rate")
    return _as_samples(value), int(sampling_rate)


def resample(samples: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """Resamples mono float32 samples with soxr (high quality); a no-op when the rates are equal."""
    if rate == target_rate:
        return samples
    return soxr.resample(samples, rate, target_rate, quality="HQ").astype(np.float32)
