"""PAL processor: the LLM tokenizer plus one feature extractor per audio encoder."""

from __future__ import annotations

import io
import json
import numbers
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile
import soxr
import torch
from transformers import (
    ASTFeatureExtractor,
    AutoFeatureExtractor,
    AutoTokenizer,
    BatchFeature,
    ClapFeatureExtractor,
    ProcessorMixin,
    Wav2Vec2FeatureExtractor,
    WhisperFeatureExtractor,
)
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from .configuration_pal import (
    AST_FAMILY,
    CLAP_FAMILY,
    MAX_AUDIO_ENCODERS,
    WAVEFORM_FAMILY,
    WHISPER_FAMILY,
    PalConfig,
    num_encoder_tokens,
    num_plits_tokens,
)
from .modeling_pal import AUDIO_INPUT_PREFIXES

MAX_CHANNELS = 8
ENCODED_TYPES = (bytes, bytearray, memoryview)  # encoded audio files, decoded like paths
DEFAULT_WAVEFORM_WINDOW_SECONDS = 30.0


def _fetch_url(url: str) -> bytes:
    """The encoded bytes behind an http(s) URL; a failed request (HTTP error, no network, timeout) raises ValueError."""
    try:
        with urllib.request.urlopen(url, timeout=30.0) as response:
            return response.read()
    except OSError as error:  # URLError, HTTPError and timeouts
        raise ValueError(f"cannot fetch audio {url}: {error}") from error


def _decode_file(source: str | Path | bytes | bytearray | memoryview | BinaryIO) -> tuple[np.ndarray, int]:
    """
    Decodes a path, an http(s) URL, encoded bytes or a binary file object at the file's own rate, with libsndfile
    (WAV, FLAC, OGG, MP3, ...) or else torchcodec (m4a, aac, webm, ...): mono samples `(samples,)` (its channels
    averaged, however many) and the rate.
    """
    label = repr(source)[:80]
    if isinstance(source, str) and source.startswith(("http://", "https://")):
        source = _fetch_url(source)
    if isinstance(source, ENCODED_TYPES):
        source = io.BytesIO(source)
    elif not hasattr(source, "read") and not Path(source).is_file():
        raise FileNotFoundError(f"audio file not found: {source}")
    start = source.tell() if hasattr(source, "seekable") and source.seekable() else None
    try:
        data, rate = soundfile.read(source, dtype="float32", always_2d=True)
    except Exception as error:  # soundfile raises its own LibsndfileError subclasses
        if start is not None:
            source.seek(start)
        decoded = _decode_with_ffmpeg(source)
        if decoded is None:
            raise ValueError(f"cannot decode audio {label}: {error}") from error
        return decoded
    return data.mean(axis=1), rate


def _decode_with_ffmpeg(source: str | Path | BinaryIO) -> tuple[np.ndarray, int] | None:
    """
    Decodes formats libsndfile lacks (m4a, aac, webm, mp4 audio) with torchcodec (FFmpeg); `None` where it is not
    installed, cannot load FFmpeg, or cannot decode the source either.
    """
    try:  # torchcodec is optional (the `data` extra); in a try block, remote code does not require it either
        from torchcodec.decoders import AudioDecoder

        return _decode_torchcodec(AudioDecoder(source))
    except Exception:
        return None


def _from_mapping(value: Mapping, sampling_rate: int | None) -> tuple[object, int | None]:
    """Reads `{"array", "sampling_rate"}`, `{"path"}` or `{"bytes"}` dicts."""
    if value.get("array") is not None:
        return value["array"], value.get("sampling_rate", sampling_rate)
    if value.get("bytes") is not None:
        return _decode_file(value["bytes"])
    if value.get("path") is not None:
        return _decode_file(value["path"])
    raise ValueError(f"audio dict has none of 'array', 'bytes' or 'path' (keys: {sorted(value)})")


def _decode_torchcodec(decoder) -> tuple[np.ndarray, int]:
    """
    Decodes a torchcodec `AudioDecoder` (what `datasets` Audio columns hold): mono samples `(samples,)` (its channels
    averaged) and the rate. One that resamples gives wrong samples from its second decoding on (torchcodec 0.13), so the
    file behind a `datasets` decoder (its `_hf_encoded` bytes or local path) is decoded afresh, at its own rate.
    """
    encoded = getattr(decoder, "_hf_encoded", None) or {}
    source = encoded.get("bytes") or encoded.get("path")
    if isinstance(source, bytes) or (isinstance(source, str) and Path(source).is_file()):
        decoder = type(decoder)(source, stream_index=decoder.stream_index)
    decoded = decoder.get_all_samples()
    return decoded.data.mean(dim=0).numpy(), decoded.sample_rate


def _as_samples(value: object) -> np.ndarray:
    """
    Validates raw samples and returns them as 1-D float32, down-mixing the channel axis (size ≤ 8) of 2-D input.
    Integer arrays and tensors are PCM: scaled by their dtype's range to [-1, 1] (unsigned ones centred first).
    """
    try:
        samples = np.asarray(value, dtype=np.float32) if isinstance(value, (list, tuple)) else _as_array(value)
    except Exception as error:
        raise ValueError(f"audio is not a numeric array: {type(value).__name__} ({error})") from error
    if samples.dtype == object or not (np.issubdtype(samples.dtype, np.number) or samples.dtype == bool):
        raise ValueError(f"audio must be numeric, got dtype {samples.dtype}")
    samples = _pcm_to_float(samples)
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


def _as_array(value: object) -> np.ndarray:
    """
    An array or tensor (on any device, requiring grad or not) as a numpy array: float tensors as float32 (numpy has no
    bfloat16), other tensors and arrays in their own dtype.
    """
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return (value.float() if value.is_floating_point() else value).numpy()
    return np.asarray(value)


def _pcm_to_float(samples: np.ndarray) -> np.ndarray:
    """Integer PCM → float in [-1, 1] (int16 by 32768, uint8 centred on 128); other dtypes unchanged."""
    if not np.issubdtype(samples.dtype, np.integer):
        return samples
    info = np.iinfo(samples.dtype)
    scale = 2.0 ** (info.bits - 1)
    return (samples.astype(np.float64) - (0 if info.min < 0 else scale)) / scale


def _sampling_rate(value: object) -> int:
    """A sampling rate as a positive `int`; anything else (0, negative, fractional, a string) raises."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (value > 0 and float(value).is_integer()):
        raise ValueError(f"sampling_rate must be a positive integer (Hz), got {value!r}")
    return int(value)


def load_audio(value: object, sampling_rate: int | None = None) -> tuple[np.ndarray, int]:
    """
    Turns any supported audio value into mono float32 samples and their rate, without resampling.

    Args:
        value: a path (`str`/`Path`), an http(s) URL, encoded bytes (`bytes`, `bytearray`, `memoryview`), a binary
            file object, a 1-D list, a 1-D/2-D array or tensor (integer PCM is scaled to [-1, 1]), a dict with
            `array` (+ `sampling_rate`), `path` or `bytes`, or a `datasets` `AudioDecoder` (decoded at the file's own
            rate).
        sampling_rate: the rate of raw arrays/lists/tensors (paths are decoded at the file's own rate).

    Returns:
        `(samples, rate)` with `samples` of shape `(num_samples,)`.

    Raises:
        `ValueError` naming the problem (`None`, empty, NaN/inf, non-numeric, wrong rank, undecodable, unknown or
        invalid rate);
        `FileNotFoundError` for a missing path.
    """
    if value is None:
        raise ValueError("audio is None; a prompt without audio takes no clip (`[]` in a per-prompt list)")
    if isinstance(value, (str, Path, *ENCODED_TYPES)) or hasattr(value, "read"):
        value, sampling_rate = _decode_file(value)
    elif hasattr(value, "get_all_samples"):
        value, sampling_rate = _decode_torchcodec(value)
    elif isinstance(value, Mapping):
        value, sampling_rate = _from_mapping(value, sampling_rate)
    if sampling_rate is None:
        raise ValueError("raw audio needs a sampling_rate")
    return _as_samples(value), _sampling_rate(sampling_rate)


def resample(samples: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """Resamples mono float32 samples with soxr (high quality); a no-op when the rates are equal."""
    if rate == target_rate:
        return samples
    return soxr.resample(samples, rate, target_rate, quality="HQ").astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------------
# Encoder windows: every encoder family splits audio into its own fixed windows and featurizes them
# ----------------------------------------------------------------------------------------------------------------------
#
# An adapter has `model_types`, `window_samples(feature_extractor, waveform_window_seconds)` (the window length in
# samples at the extractor's rate) and `featurize(feature_extractor, windows, window_samples)`: `N` windows (each at
# most one window long) → features `(N, *feature_shape)` and the mask `(N, frames)` of their valid feature frames
# (a prefix of each window), as numpy arrays. The mask feeds `num_encoder_tokens`, as in the model.


def split_windows(samples: np.ndarray, window_samples: int) -> list[np.ndarray]:
    """Consecutive windows of `window_samples` samples; the last one holds the remainder (nothing is cut)."""
    return [samples[start : start + window_samples] for start in range(0, len(samples), window_samples)]


def _prefix_mask(valid: list[int], num_frames: int) -> np.ndarray:
    """`(N, num_frames)` int64 mask whose first `valid[i]` frames are 1."""
    return (np.arange(num_frames)[None, :] < np.asarray(valid)[:, None]).astype(np.int64)


class WhisperWindows:
    """Whisper: `chunk_length`-second windows → log-mel features `(mel_bins, frames)` and its mel-frame mask."""

    model_types = WHISPER_FAMILY

    @staticmethod
    def window_samples(feature_extractor: WhisperFeatureExtractor, waveform_window_seconds: float) -> int:
        return feature_extractor.n_samples

    @staticmethod
    def featurize(
        feature_extractor: WhisperFeatureExtractor, windows: list[np.ndarray], window_samples: int
    ) -> tuple[np.ndarray, np.ndarray]:
        out = feature_extractor(
            windows,
            sampling_rate=feature_extractor.sampling_rate,
            padding="max_length",
            return_attention_mask=True,
            return_tensors="np",
        )
        return out["input_features"], out["attention_mask"].astype(np.int64)


class ClapWindows:
    """
    CLAP (unfused HTSAT): `max_length_s`-second windows (10 s at 48 kHz for `laion/clap-htsat-unfused`), zero-padded
    (never `"repeatpad"`, never cropped) → log-mel `(1, frames, mels)`. Mel frame `i` is centred on sample `i · hop`
    and is valid when that sample lies in the window's audio: `ceil(samples / hop)` frames.
    """

    model_types = CLAP_FAMILY

    @staticmethod
    def window_samples(feature_extractor: ClapFeatureExtractor, waveform_window_seconds: float) -> int:
        return feature_extractor.nb_max_samples

    @staticmethod
    def featurize(
        feature_extractor: ClapFeatureExtractor, windows: list[np.ndarray], window_samples: int
    ) -> tuple[np.ndarray, np.ndarray]:
        hop = feature_extractor.hop_length
        silence = ClapWindows._log_mel(feature_extractor, np.zeros(4 * hop, dtype=np.float32), 4 * hop)[:, :1]
        frames = feature_extractor.nb_max_samples // hop + 1
        features = np.repeat(silence[None], len(windows), axis=0).repeat(frames, axis=2)
        for index, window in enumerate(windows):
            # Mel frames are local and the window is zero-padded: frames past the audio equal the silence frame, so
            # only the audio (plus a few hops of context) is transformed — several times faster for short clips.
            length = min(feature_extractor.nb_max_samples, (len(window) // hop + 4) * hop)
            mel = ClapWindows._log_mel(feature_extractor, window, length)
            features[index, :, : mel.shape[1]] = mel
        valid = [-(-len(window) // hop) for window in windows]
        return features, _prefix_mask(valid, frames)

    @staticmethod
    def _log_mel(feature_extractor: ClapFeatureExtractor, samples: np.ndarray, length: int) -> np.ndarray:
        """Log-mel `(1, frames, mels)` of `samples` zero-padded to `length` samples."""
        return feature_extractor(
            samples,
            sampling_rate=feature_extractor.sampling_rate,
            max_length=length,
            padding="zeros",  # anything but "repeat"/"repeatpad" pads with zeros
            truncation="rand_trunc",  # unfused features; windows are never longer than max_length, so never cropped
            return_tensors="np",
        )["input_features"][0]


class AstWindows:
    """
    AST: `max_length` Kaldi filterbank frames per window (1024 frames, 10.24 s + 15 ms at 16 kHz) → `(frames,
    mel_bins)`. A window's valid frames are its whole 25 ms frames, 10 ms apart: `(samples - 400) // 160 + 1` at
    16 kHz. A full window is exactly `max_length` whole frames long, so consecutive windows leave no sample unframed.
    """

    model_types = AST_FAMILY
    FRAME_SHIFT_MS, FRAME_LENGTH_MS = 10, 25  # torchaudio's Kaldi defaults, used by `ASTFeatureExtractor`

    @classmethod
    def _frame(cls, feature_extractor: ASTFeatureExtractor) -> tuple[int, int]:
        """`(hop, frame_length)` in samples."""
        rate = feature_extractor.sampling_rate
        return rate * cls.FRAME_SHIFT_MS // 1000, rate * cls.FRAME_LENGTH_MS // 1000

    @classmethod
    def window_samples(cls, feature_extractor: ASTFeatureExtractor, waveform_window_seconds: float) -> int:
        hop, frame = cls._frame(feature_extractor)
        return (feature_extractor.max_length - 1) * hop + frame

    @classmethod
    def featurize(
        cls, feature_extractor: ASTFeatureExtractor, windows: list[np.ndarray], window_samples: int
    ) -> tuple[np.ndarray, np.ndarray]:
        hop, frame = cls._frame(feature_extractor)
        valid = [max(0, (len(window) - frame) // hop + 1) for window in windows]
        # a window without a whole frame is all padding; lengthen it to one sample short of a frame, which the
        # extractor featurizes as such (shorter ones make it fail)
        windows = [np.pad(window, (0, max(0, frame - 1 - len(window)))) for window in windows]
        features = feature_extractor(windows, sampling_rate=feature_extractor.sampling_rate, return_tensors="np")
        return features["input_values"], _prefix_mask(valid, feature_extractor.max_length)


class WaveformWindows:
    """
    wav2vec2 / HuBERT / data2vec-audio: `waveform_window_seconds`-second windows (the processor's setting, 30 s by
    default) of samples, normalised over their valid samples by the extractor → `(samples,)` and the sample mask.
    """

    model_types = WAVEFORM_FAMILY

    @staticmethod
    def window_samples(feature_extractor: Wav2Vec2FeatureExtractor, waveform_window_seconds: float) -> int:
        return round(waveform_window_seconds * feature_extractor.sampling_rate)

    @staticmethod
    def featurize(
        feature_extractor: Wav2Vec2FeatureExtractor, windows: list[np.ndarray], window_samples: int
    ) -> tuple[np.ndarray, np.ndarray]:
        out = feature_extractor(
            windows,
            sampling_rate=feature_extractor.sampling_rate,
            padding="max_length",
            max_length=window_samples,
            return_attention_mask=True,
            return_tensors="np",
        )
        return out["input_values"], out["attention_mask"].astype(np.int64)


AUDIO_WINDOW_ADAPTERS = {
    model_type: adapter
    for adapter in (WhisperWindows, ClapWindows, AstWindows, WaveformWindows)
    for model_type in adapter.model_types
}


def audio_window_adapter(model_type: str) -> type:
    """The windowing of an encoder type; unknown types raise a `ValueError` naming them."""
    adapter = AUDIO_WINDOW_ADAPTERS.get(model_type)
    if adapter is None:
        raise ValueError(f"Unsupported audio encoder type {model_type!r}; supported: {sorted(AUDIO_WINDOW_ADAPTERS)}")
    return adapter


def encoder_windows(
    model_type: str,
    feature_extractor,
    samples: np.ndarray,
    waveform_window_seconds: float = DEFAULT_WAVEFORM_WINDOW_SECONDS,
) -> tuple[np.ndarray, np.ndarray]:
    """
    One clip's windows for one encoder, at the feature extractor's rate: features `(W, *feature_shape)` and the
    valid-frame mask `(W, frames)`. `waveform_window_seconds` sets the wav2vec2-family window.
    """
    adapter = audio_window_adapter(model_type)
    size = adapter.window_samples(feature_extractor, waveform_window_seconds)
    return adapter.featurize(feature_extractor, split_windows(samples, size), size)


# ----------------------------------------------------------------------------------------------------------------------
# Chat template: the LLM's own text-only template, behind a prefix that turns content lists into text
# ----------------------------------------------------------------------------------------------------------------------

CHAT_PREFIX_START = "{#- PAL: content lists become text, one audio token per audio item -#}\n"
CHAT_PREFIX_END = "{#- PAL: the LLM's own chat template follows, unchanged -#}\n"
CHAT_PREFIX_BODY = """{%- set pal = namespace(messages=[]) -%}
{%- for message in messages -%}
{%- if message.content is defined and message.content is not string -%}
{%- set pal.text = '' -%}
{%- for item in message.content -%}
{%- if item.type == 'audio' -%}{%- set pal.text = pal.text + AUDIO_TOKEN -%}
{%- elif item.type == 'text' and item.text is string -%}{%- set pal.text = pal.text + item.text -%}
{%- else -%}{{- raise_exception('PAL chats take {"type": "text", "text": ...} and {"type": "audio", ...} items, got '
~ (item | string)[:120]) -}}
{%- endif -%}
{%- endfor -%}
{%- set pal.messages = pal.messages + [dict(message, content=pal.text)] -%}
{%- else -%}{%- set pal.messages = pal.messages + [message] -%}
{%- endif -%}
{%- endfor -%}
{%- set messages = pal.messages -%}
"""


def wrap_chat_template(template: str | dict | None, audio_token: str) -> str | dict | None:
    """
    Puts PAL's prefix in front of a text-only chat template (or each of a dict of named templates): content lists
    become strings (audio items → `audio_token`, text items → their text) before the original template runs verbatim.
    An already wrapped template is re-wrapped, so the audio token is always the current one.
    """
    if isinstance(template, dict):
        return {name: wrap_chat_template(value, audio_token) for name, value in template.items()}
    if template is None:
        return None
    if template.startswith(CHAT_PREFIX_START):
        template = template.split(CHAT_PREFIX_END, 1)[1]
    body = CHAT_PREFIX_BODY.replace("AUDIO_TOKEN", json.dumps(audio_token))
    return CHAT_PREFIX_START + body + CHAT_PREFIX_END + template


# ----------------------------------------------------------------------------------------------------------------------
# Processor
# ----------------------------------------------------------------------------------------------------------------------


def _is_clip_list(value: object) -> bool:
    """
    A list of clips (a list, tuple or other sequence, e.g. a `datasets` column), as opposed to one clip given as a
    list of samples, a path or encoded bytes.
    """
    if not isinstance(value, Sequence) or isinstance(value, (str, *ENCODED_TYPES)):
        return False
    return not any(isinstance(item, numbers.Number) for item in value)


class PalProcessor(ProcessorMixin):
    r"""
    Processor of PAL audio-LLMs: the LLM's tokenizer plus one feature extractor per audio encoder slot.

    It expands each `audio_token` of the text into that clip's PLITS placeholders (one run per PLITS encoder, in slot
    order) followed by one marker token for LAL, splits each clip into every window of each encoder (nothing is cut),
    and lays the windows out batch-major, as `PalForConditionalGeneration.forward` takes them.

    Args:
        tokenizer (`PreTrainedTokenizerBase`):
            The LLM's tokenizer, holding `audio_token` and `audio_placeholder_token`.
        feature_extractor, feature_extractor_1, feature_extractor_2, feature_extractor_3 (`FeatureExtractionMixin`, *optional*):
            The feature extractor of encoder slot 0…3 (`WhisperFeatureExtractor`, `ClapFeatureExtractor`,
            `ASTFeatureExtractor` or `Wav2Vec2FeatureExtractor`); slots fill in order.
        chat_template (`str`, *optional*):
            The LLM's text-only chat template; it is wrapped so that chats may hold `{"type": "audio"}` items.
        audio_token (`str`, *optional*, defaults to `"<|audio|>"`):
            The token the user writes once per clip; it stays in the text as the clip's LAL marker.
        audio_placeholder_token (`str`, *optional*, defaults to `"<|audio_pad|>"`):
            The token that PLITS audio embeddings replace.
        audio_encoders (`list[dict]`, *optional*):
            Per slot, the model's encoder settings (`PalConfig.audio_encoders`) plus the encoder's `model_type` and
            `audio_config` (its config as a dict, for the token counts; defaults to the type's default config).
        num_summary_tokens (`int`, *optional*, defaults to 32):
            Q-Former queries per encoder window (hybrid integration and `projector="qformer"`).
        max_audio_seconds (`float`, *optional*, defaults to 600):
            Longest clip accepted; longer clips raise a `ValueError` (nothing is silently cut).
        sampling_rate (`int`, *optional*, defaults to 16000):
            The rate assumed for raw arrays when `sampling_rate` is not passed. Files keep their own rate.
        transcription_prompt (`str`, *optional*, defaults to `"Transcribe the audio."`):
            The request written by `apply_transcription_request`.
        waveform_window_seconds (`float`, *optional*, defaults to 30):
            Window length of waveform encoders (wav2vec2, HuBERT, data2vec-audio), whose feature extractors have
            none. Other encoders take their feature extractor's window (Whisper `chunk_length`, CLAP `max_length_s`,
            AST `max_length` frames).
    """

    text_kwargs = {"padding": True, "return_tensors": "pt"}

    def __init__(
        self,
        tokenizer,
        feature_extractor=None,
        feature_extractor_1=None,
        feature_extractor_2=None,
        feature_extractor_3=None,
        chat_template: str | dict | None = None,
        audio_token: str = "<|audio|>",
        audio_placeholder_token: str = "<|audio_pad|>",
        audio_encoders: list[dict] | None = None,
        num_summary_tokens: int = 32,
        max_audio_seconds: float = 600,
        sampling_rate: int = 16000,
        transcription_prompt: str = "Transcribe the audio.",
        waveform_window_seconds: float = DEFAULT_WAVEFORM_WINDOW_SECONDS,
    ):
        extractors = [feature_extractor, feature_extractor_1, feature_extractor_2, feature_extractor_3]
        self.audio_encoders = [dict(settings) for settings in audio_encoders or []]
        expected = [True] * len(self.audio_encoders) + [False] * (MAX_AUDIO_ENCODERS - len(self.audio_encoders))
        if [extractor is not None for extractor in extractors] != expected:
            raise ValueError(
                f"PalProcessor needs one feature extractor per entry of audio_encoders ({len(self.audio_encoders)}), "
                "in slots feature_extractor, feature_extractor_1, … without gaps"
            )
        for settings in self.audio_encoders:
            audio_window_adapter(settings["model_type"])
        self._encoder_configs = [
            CONFIG_MAPPING[settings["model_type"]].from_dict(settings.get("audio_config", {}))
            for settings in self.audio_encoders
        ]
        self.audio_token = audio_token
        self.audio_placeholder_token = audio_placeholder_token
        self.num_summary_tokens = num_summary_tokens
        self.max_audio_seconds = max_audio_seconds
        self.sampling_rate = sampling_rate
        self.transcription_prompt = transcription_prompt
        if not waveform_window_seconds > 0:
            raise ValueError(f"waveform_window_seconds must be positive, got {waveform_window_seconds}")
        self.waveform_window_seconds = waveform_window_seconds
        chat_template = wrap_chat_template(chat_template or tokenizer.chat_template, audio_token)
        super().__init__(tokenizer, *extractors, chat_template=chat_template)
        self.audio_token_id = self._vocabulary_id(audio_token)
        self.audio_placeholder_token_id = self._vocabulary_id(audio_placeholder_token)
        self.audio_token_ids = [self.audio_token_id, self.audio_placeholder_token_id]
        _use_left_padding(tokenizer)

    def _vocabulary_id(self, token: str) -> int:
        if token not in self.tokenizer.get_vocab():
            raise ValueError(
                f"{token!r} is not in the tokenizer's vocabulary; build the processor with PalProcessor.from_components"
            )
        return self.tokenizer.convert_tokens_to_ids(token)

    @classmethod
    def from_components(
        cls, text_model: str, audio_encoders: dict[str, str], config: PalConfig, **loading_kwargs
    ) -> PalProcessor:
        """
        Builds the processor of a model made by `PalForConditionalGeneration.from_components`.

        Args:
            text_model: the LLM checkpoint (local path or Hub id) whose tokenizer to load.
            audio_encoders: `{name: checkpoint}` in slot order, as given to the model; each checkpoint's feature
                extractor is loaded with `AutoFeatureExtractor`.
            config: the model's `PalConfig`, for the encoder settings and the special tokens.
            loading_kwargs: the processor's own settings (`max_audio_seconds`, `sampling_rate`,
                `transcription_prompt`, `waveform_window_seconds`) go to the processor; the rest to every
                `from_pretrained` (e.g. `revision`).

        Raises:
            `ValueError` when the encoder names differ from the model's, or when the tokenizer gives PAL's tokens
            other ids than the model config.
        """
        names = [settings["name"] for settings in config.audio_encoders]
        if list(audio_encoders) != names:
            raise ValueError(f"audio_encoders {list(audio_encoders)} must name the model's encoders in order: {names}")
        settings = {name: loading_kwargs.pop(name) for name in PROCESSOR_SETTINGS if name in loading_kwargs}
        tokenizer = AutoTokenizer.from_pretrained(text_model, **loading_kwargs)
        _add_audio_tokens(tokenizer, config)
        extractors = [AutoFeatureExtractor.from_pretrained(path, **loading_kwargs) for path in audio_encoders.values()]
        return cls(
            tokenizer,
            *extractors,
            audio_token=config.audio_token,
            audio_placeholder_token=config.audio_placeholder_token,
            audio_encoders=[
                {**settings, "model_type": audio_config.model_type, "audio_config": audio_config.to_diff_dict()}
                for settings, audio_config in zip(config.audio_encoders, config.audio_configs)
            ],
            num_summary_tokens=config.num_summary_tokens,
            **settings,
        )

    @property
    def feature_extractors(self) -> list:
        """The feature extractors of the filled encoder slots, in slot order."""
        return [getattr(self, name) for name in FEATURE_EXTRACTOR_SLOTS[: len(self.audio_encoders)]]

    @property
    def model_input_names(self) -> list[str]:
        audio_names = [
            f"{prefix}{slot}" for slot in range(len(self.audio_encoders)) for prefix in AUDIO_INPUT_PREFIXES
        ]
        return list(self.tokenizer.model_input_names) + audio_names

    def __call__(
        self,
        text: str | list[str] | None = None,
        audio=None,
        sampling_rate: int | None = None,
        **kwargs,
    ) -> BatchFeature:
        r"""
        Tokenizes prompts and featurizes their clips into model inputs.

        Args:
            text (`str` or `list[str]`):
                One prompt or a batch, with one `audio_token` per clip.
            audio (*optional*):
                The clips, in text order as one flat list (or a `datasets` column), or one list per prompt (`[]` for
                text-only prompts). A clip is a 1-D array/tensor/list (mono), a 2-D array or tensor (multi-channel:
                the axis of size ≤ 8 is channels, down-mixed; a list of lists is a list of clips), a path or http(s)
                URL (decoded at the file's own rate), encoded bytes or a binary file object, a `datasets`-style dict
                (`{"array", "sampling_rate"}`, `{"path"}`, `{"bytes"}`), or a `datasets` `AudioDecoder`. Integer
                arrays are PCM, scaled by their dtype's range to [-1, 1].
            sampling_rate (`int`, *optional*):
                The rate of raw arrays; defaults to `processor.sampling_rate` (16000). Every clip is resampled to
                each encoder's rate.
            kwargs:
                Tokenizer options (`text_kwargs={...}` or flat), e.g. `padding_side="right"` for training.

        Returns:
            [`BatchFeature`] with `input_ids` and `attention_mask` `(batch, seq_len)` (padded on the tokenizer's
            `padding_side`, left unless changed), and per encoder slot k: `audio_features_{k}` `(batch, max_windows,
            *feature_shape)`, `audio_feature_mask_{k}` `(batch, max_windows, feature_frames)` and
            `audio_window_clip_{k}` `(batch, max_windows)` (clip index of each window in its prompt, -1 for padding
            windows). Without any clip only the text entries are returned.

        Raises:
            `ValueError` naming the problem: no prompt, a `text` that is not prompts (a chat, say), images or videos,
            `None`, empty, NaN/inf, non-numeric or wrongly shaped audio, a sampling rate that is not a positive
            integer, a number of clips that differs from the number of audio tokens (both counts are given), a clip
            longer than `max_audio_seconds` or with no sample left at an encoder's rate, or a truncation that would
            cut audio tokens.
        """
        texts = [] if text is None else [text] if isinstance(text, str) else text
        if not isinstance(texts, Sequence) or not all(isinstance(sample, str) for sample in texts):
            raise ValueError(
                f"text takes a prompt or a list of prompts (str), got {text!r:.80}; chats go through "
                "processor.apply_chat_template"
            )
        texts = list(texts)
        if not texts:
            raise ValueError(f"PalProcessor needs text (one prompt or more), with one {self.audio_token} per clip")
        for modality in ("images", "videos"):  # pipelines pass them as None
            if kwargs.pop(modality, None) is not None:
                raise ValueError(f"PAL takes text and audio only, got {modality}")
        merged = self._merge_kwargs(tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs)
        text_kwargs = merged["text_kwargs"]
        return_mm_token_type_ids = text_kwargs.pop("return_mm_token_type_ids", merged["return_mm_token_type_ids"])
        return_offsets = text_kwargs.pop("return_text_replacement_offsets", merged["return_text_replacement_offsets"])
        if sampling_rate is None:
            sampling_rate = merged["audio_kwargs"].get("sampling_rate")
        sampling_rate = self.sampling_rate if sampling_rate is None else sampling_rate

        clips = self._load_clips(texts, audio, sampling_rate)
        audio_inputs, replacements = self._process_audio(clips)
        texts, offsets = self.get_text_with_replacements(texts, audio_replacements=replacements)
        text_inputs = self.tokenizer(texts, **text_kwargs)
        self._check_special_mm_tokens(texts, text_inputs, modalities=["audio", "audio_placeholder"])
        if return_offsets:
            text_inputs["text_replacement_offsets"] = offsets
        if return_mm_token_type_ids:
            text_inputs["mm_token_type_ids"] = self.create_mm_token_type_ids(text_inputs["input_ids"])
        return BatchFeature(
            {**text_inputs, **audio_inputs},
            tensor_type=text_kwargs.get("return_tensors"),
            skip_tensor_conversion=self.skip_tensor_conversion,
        )

    def _load_clips(self, texts: list[str], audio, sampling_rate: int) -> list[list[tuple[np.ndarray, int]]]:
        """Assigns the clips to the prompts by their audio tokens and decodes them: per prompt, `(samples, rate)`."""
        counts = [sample.count(self.audio_token) for sample in texts]
        audio = [] if audio is None else list(audio) if _is_clip_list(audio) else [audio]
        per_sample = audio if audio and len(audio) == len(texts) and all(map(_is_prompt_clips, audio)) else None
        if per_sample is None:
            if sum(counts) != len(audio):
                raise ValueError(
                    f"The text has {sum(counts)} {self.audio_token} tokens but {len(audio)} audio clips were given; "
                    "write one audio token per clip"
                )
            starts = np.cumsum([0, *counts])
            per_sample = [audio[start:end] for start, end in zip(starts[:-1], starts[1:])]
        for index, (count, sample_clips) in enumerate(zip(counts, per_sample)):
            if sample_clips is None:
                raise ValueError(f"The audio of prompt {index} is None; give `[]` for a prompt without audio")
            if count != len(sample_clips):
                raise ValueError(
                    f"Prompt {index} has {count} {self.audio_token} tokens but {len(sample_clips)} audio clips; "
                    "write one audio token per clip"
                )
        return [
            [
                self._load_clip(clip, sampling_rate, f"prompt {index}, clip {position}")
                for position, clip in enumerate(sample)
            ]
            for index, sample in enumerate(per_sample)
        ]

    def _load_clip(self, clip, sampling_rate: int, where: str) -> tuple[np.ndarray, int]:
        try:
            samples, rate = load_audio(clip, sampling_rate)
        except ValueError as error:
            raise ValueError(f"Audio of {where}: {error}") from error
        if len(samples) > self.max_audio_seconds * rate:
            raise ValueError(
                f"Audio of {where} is {len(samples) / rate:.1f} s long, more than max_audio_seconds="
                f"{self.max_audio_seconds}; split it, or raise the processor's max_audio_seconds"
            )
        return samples, rate

    def _process_audio(self, clips: list[list[tuple[np.ndarray, int]]]) -> tuple[dict[str, np.ndarray], list[str]]:
        """
        Featurizes every clip for every encoder slot.

        Args:
            clips: per prompt, its clips as `(samples, rate)`, in text order.

        Returns:
            The per-slot model inputs and one replacement string per clip, in text order.
        """
        if not any(clips):
            return {}, []
        audio_inputs, plits_counts = {}, []
        for slot, settings in enumerate(self.audio_encoders):
            slot_inputs, counts = self._process_slot(slot, clips)
            audio_inputs.update(slot_inputs)
            if settings["integration"] in PLITS_INTEGRATIONS:
                plits_counts.append(counts)
        marker = self.audio_token if any(s["integration"] in LAL_INTEGRATIONS for s in self.audio_encoders) else ""
        replacements = [
            "".join(self.audio_placeholder_token * counts[clip] for counts in plits_counts) + marker
            for clip in range(sum(map(len, clips)))
        ]
        return audio_inputs, replacements

    def _process_slot(
        self, slot: int, clips: list[list[tuple[np.ndarray, int]]]
    ) -> tuple[dict[str, np.ndarray], list[int]]:
        """
        Splits every clip into this encoder's windows (all of them) and featurizes them.

        Returns:
            `audio_features_{slot}` `(batch, max_windows, *feature_shape)`, `audio_feature_mask_{slot}`
            `(batch, max_windows, frames)`, `audio_window_clip_{slot}` `(batch, max_windows)`; and per clip (in text
            order) the number of PLITS placeholders this encoder fills.
        """
        extractor, settings = self.feature_extractors[slot], self.audio_encoders[slot]
        adapter = audio_window_adapter(settings["model_type"])
        size = adapter.window_samples(extractor, self.waveform_window_seconds)
        flat = [(index, position, clip) for index, sample in enumerate(clips) for position, clip in enumerate(sample)]
        windows, owners = [], []  # owners[i] = (prompt, clip within the prompt, clip in text order) of window i
        for order, (index, position, (samples, rate)) in enumerate(flat):
            samples = resample(samples, rate, extractor.sampling_rate)
            if not len(samples):
                raise ValueError(
                    f"Audio of prompt {index}, clip {position} is too short: resampled from {rate} Hz to the "
                    f"{extractor.sampling_rate} Hz of encoder slot {slot}, it has no sample left"
                )
            pieces = split_windows(samples, size)
            windows.extend(pieces)
            owners.extend([(index, position, order)] * len(pieces))
        features, mask = adapter.featurize(extractor, windows, size)
        tokens = num_encoder_tokens(self._encoder_configs[slot], mask.sum(-1), mask.shape[-1])
        clip_tokens, counts = [0] * len(flat), [0] * len(flat)
        for (_, _, clip), count in zip(owners, tokens.tolist()):
            clip_tokens[clip] += count
            counts[clip] += num_plits_tokens(settings, count, self.num_summary_tokens)
        for (index, position, (samples, rate)), count in zip(flat, clip_tokens):
            if count == 0:  # the model would have nothing to attend to, nor any embedding to place
                raise ValueError(
                    f"Audio of prompt {index}, clip {position} is too short for encoder slot {slot} "
                    f"({settings['name']}): {1000 * len(samples) / rate:.1f} ms give it no token"
                )
        return _batch_windows(slot, len(clips), owners, features, mask), counts

    def apply_chat_template(self, conversation: Sequence[dict] | Sequence[Sequence[dict]], *args, **kwargs):
        """Transformers' `apply_chat_template`; a batch of chats may also be a `datasets` column (`ds["messages"]`)."""
        if isinstance(conversation, Sequence) and not isinstance(conversation, (list, tuple, str)):
            conversation = list(conversation)
        return super().apply_chat_template(conversation, *args, **kwargs)

    def _resolve_chat_template(self, chat_template: str | None) -> str:
        """
        The template `apply_chat_template` renders, wrapped so that its chats may hold audio items, also when it was
        passed as `chat_template=` or assigned to `processor.chat_template` after loading.
        """
        return wrap_chat_template(super()._resolve_chat_template(chat_template), self.audio_token)

    def _multimodal_inputs_from_conversations(
        self, conversations: list[list[dict]], audio_loading_params: dict, load_audio_from_video: bool = False
    ):
        """The audio of every `{"type": "audio"}` item, in chat order; files are decoded later at their own rate."""
        if load_audio_from_video:
            raise ValueError("PAL takes no video, so load_audio_from_video is not supported")
        audio = [
            _chat_audio_source(item)
            for conversation in conversations
            for message in conversation
            if isinstance(message.get("content"), (list, tuple))
            for item in message["content"]
            if item.get("type") == "audio"
        ]
        empty = [[] for _ in conversations]
        return empty, empty, audio, {}

    def _resolve_audio_loading_params(self, processor_kwargs: dict) -> dict:
        """Arrays in chats are taken at `sampling_rate` when given, else at `processor.sampling_rate`."""
        audio_kwargs = processor_kwargs.get("audio_kwargs", {})
        return {
            "sampling_rate": processor_kwargs.get(
                "sampling_rate", audio_kwargs.get("sampling_rate", self.sampling_rate)
            )
        }

    def collate(self, features: list[Mapping], padding_side: str | None = None) -> BatchFeature:
        """
        Merges separate processor outputs (e.g. one prompt each, as a pipeline makes them) into the batch one call
        on all their prompts gives: the text padded on `padding_side`, each slot's windows padded to the most windows
        with zero features, zero masks and clip index -1. A prompt without audio gets only padding windows.

        Args:
            features: processor outputs as tensors or arrays, each `(batch_i, ...)`.
            padding_side (*optional*): `"left"` or `"right"`; defaults to the tokenizer's (left).

        Returns:
            [`BatchFeature`] of torch tensors, each `(sum(batch_i), ...)`.
        """
        features = [{name: torch.as_tensor(value) for name, value in item.items()} for item in features]
        batch_sizes = [len(item["input_ids"]) for item in features]
        text_side = padding_side or self.tokenizer.padding_side
        batch = {}
        for name in dict.fromkeys(name for item in features for name in item):
            if name.startswith(AUDIO_INPUT_PREFIXES):
                value, side = (-1 if name.startswith("audio_window_clip_") else 0), "right"
            else:
                value, side = (self.tokenizer.pad_token_id if name == "input_ids" else 0), text_side
            batch[name] = _pad_concat([item.get(name) for item in features], batch_sizes, value, side)
        return BatchFeature(batch)

    def apply_transcription_request(self, audio, language: str | None = None, **kwargs) -> BatchFeature:
        """
        Model inputs asking for the transcription of each clip (one chat per clip), like Voxtral's and AF3's.

        Args:
            audio: one clip or a list of clips (arrays at `processor.sampling_rate`, paths, URLs, dicts).
            language: the spoken language, added to the request when given (e.g. `"English"`).
            kwargs: passed to `apply_chat_template` (e.g. `processor_kwargs={"sampling_rate": 8000}`).

        Returns:
            [`BatchFeature`] of model inputs, ending in the assistant turn's header.
        """
        clips = audio if _is_clip_list(audio) else [audio]
        request = (
            self.transcription_prompt if language is None else f"{self.transcription_prompt} Language: {language}."
        )
        conversations = [
            [{"role": "user", "content": [{"type": "audio", "audio": clip}, {"type": "text", "text": request}]}]
            for clip in clips
        ]
        return self.apply_chat_template(
            conversations, tokenize=True, return_dict=True, add_generation_prompt=True, **kwargs
        )

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """Saves like `ProcessorMixin`; empty encoder slots are written as `null` in `processor_config.json`."""
        filled = [name for name in self.get_attributes() if getattr(self, name) is not None]
        self.get_attributes = lambda: filled  # ProcessorMixin.save_pretrained touches every sub-processor
        try:
            return super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        finally:
            del self.get_attributes

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        """The tokenizer and each saved feature extractor; encoder slots saved empty (`null`) stay `None`."""
        if not processor_dict:  # no processor_config.json: the tokenizer would fail to load with a misleading error
            raise ValueError(
                f"{pretrained_model_name_or_path} holds no saved PalProcessor (processor_config.json); build it with "
                "PalProcessor.from_components and save it next to the model with processor.save_pretrained"
            )
        subfolder = kwargs.pop("subfolder", "")
        tokenizer = cls._load_tokenizer_from_pretrained(
            "tokenizer", pretrained_model_name_or_path, subfolder=subfolder, **kwargs
        )
        extractors = [processor_dict.get(name) for name in FEATURE_EXTRACTOR_SLOTS]
        return [tokenizer] + [
            None if saved is None else cls.get_possibly_dynamic_module(saved["feature_extractor_type"])(**saved)
            for saved in extractors
        ]

    def check_argument_for_proper_class(self, argument_name, argument):
        """Empty encoder slots are `None`."""
        if argument is None and argument_name in FEATURE_EXTRACTOR_SLOTS:
            return None
        return super().check_argument_for_proper_class(argument_name, argument)


PROCESSOR_SETTINGS = ("max_audio_seconds", "sampling_rate", "transcription_prompt", "waveform_window_seconds")
FEATURE_EXTRACTOR_SLOTS = ("feature_extractor", "feature_extractor_1", "feature_extractor_2", "feature_extractor_3")
PLITS_INTEGRATIONS = ("plits", "hybrid")
LAL_INTEGRATIONS = ("lal", "hybrid")


def _pad_concat(tensors: list[torch.Tensor | None], batch_sizes: list[int], value: int, side: str) -> torch.Tensor:
    """
    Concatenates `(batch_i, length_i, ...)` tensors along the batch into `(sum(batch_i), max(length_i), ...)`, the
    lengths padded with `value` on `side`; a `None` (an input that call did not return) becomes all padding.
    """
    present = [tensor for tensor in tensors if tensor is not None]
    length = max(tensor.shape[1] for tensor in present)
    out = present[0].new_full((sum(batch_sizes), length, *present[0].shape[2:]), value)
    start = 0
    for tensor, size in zip(tensors, batch_sizes):
        if tensor is not None:
            span = slice(length - tensor.shape[1], None) if side == "left" else slice(0, tensor.shape[1])
            out[start : start + size, span] = tensor
        start += size
    return out


def _is_prompt_clips(value: object) -> bool:
    """One prompt's entry in per-prompt `audio`: a list of clips, or `None` (refused later, naming the prompt)."""
    return value is None or _is_clip_list(value)


def _batch_windows(slot: int, batch: int, owners: list, features: np.ndarray, mask: np.ndarray) -> dict:
    """Lays `N` windows out batch-major: `(batch, max_windows, ...)`, padding windows zero with clip index -1."""
    rows = [[i for i, owner in enumerate(owners) if owner[0] == index] for index in range(batch)]
    most = max(map(len, rows))
    batched_features = np.zeros((batch, most, *features.shape[1:]), dtype=features.dtype)
    batched_mask = np.zeros((batch, most, mask.shape[-1]), dtype=np.int64)
    window_clip = np.full((batch, most), -1, dtype=np.int64)
    for index, sample_rows in enumerate(rows):
        batched_features[index, : len(sample_rows)] = features[sample_rows]
        batched_mask[index, : len(sample_rows)] = mask[sample_rows]
        window_clip[index, : len(sample_rows)] = [owners[row][1] for row in sample_rows]
    return {
        f"audio_features_{slot}": batched_features,
        f"audio_feature_mask_{slot}": batched_mask,
        f"audio_window_clip_{slot}": window_clip,
    }


def _chat_audio_source(item: dict) -> object:
    """The audio of a chat item: its `audio` (array, path, URL or dict), else `path`, else `url`."""
    for key in ("audio", "path", "url"):
        if item.get(key) is not None:
            return item[key]
    raise ValueError(f"A chat audio item needs an 'audio', 'path' or 'url' entry, got keys {sorted(item)}")


def _add_audio_tokens(tokenizer, config: PalConfig) -> None:
    """Adds PAL's token strings where missing (as the model did) and checks their ids against the model config."""
    tokens = {
        config.audio_token: config.audio_token_id,
        config.audio_placeholder_token: config.audio_placeholder_token_id,
    }
    missing = [token for token in tokens if token not in tokenizer.get_vocab()]
    tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    for token, config_id in tokens.items():
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id != config_id:
            raise ValueError(
                f"The tokenizer gives {token!r} id {token_id} but the model config says {config_id}; "
                "use the text model the PAL model was built from"
            )


def _use_left_padding(tokenizer) -> None:
    """Left padding, with a pad token the vocabulary already has (Llama-3's `<|finetune_right_pad_id|>`, else eos)."""
    if tokenizer.pad_token is None:
        reserved = "<|finetune_right_pad_id|>"
        tokenizer.pad_token = reserved if reserved in tokenizer.get_vocab() else tokenizer.eos_token
        if tokenizer.pad_token is None:
            raise ValueError("The tokenizer has no pad token and no eos token to pad with")
    tokenizer.padding_side = "left"


PalProcessor.register_for_auto_class()

__all__ = ["PalProcessor", "encoder_windows", "load_audio", "resample"]
