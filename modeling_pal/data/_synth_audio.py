"""Signals for PAL-Synth: sound events, music-like material and espeak-ng speech, mixed into 16 kHz clips."""

from __future__ import annotations

import io
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import soundfile
from tqdm.auto import tqdm

from ..processing_pal import resample

SAMPLING_RATE = 16000
FADE_SECONDS = 0.01
MIN_ONSET_SPACING = 0.3  # seconds between two onsets, so that "which came first" is always answerable
SPEECH_PEAK = 10 ** (-3 / 20)  # speech is peak-normalised to -3 dBFS before its gain


@dataclass(frozen=True)
class Speech:
    """One espeak-ng utterance; equal requests give byte-identical audio."""

    text: str
    voice: str  # espeak-ng voice with variant, e.g. "en-us+f3"
    speed: int  # words per minute
    pitch: int  # 0-99


@dataclass
class Event:
    """
    A sound event in a clip.

    Args:
        name: the event's name, as written to the `events` column.
        params: `kind` (the signal, see `SIGNALS`), `gain_db`, `duration` (seconds; speech takes its own length),
            the signal's parameters, and descriptive attributes used by the text templates.
        gap: seconds from the previous event's end (the clip start for the first event) to this event's onset;
            negative values overlap the previous event.
    """

    name: str
    params: dict
    gap: float = 0.0


@dataclass
class Clip:
    """Events in onset order, a seed for the clip's noise, its least duration (silence pads it) and noise floor."""

    events: list[Event]
    seed: int
    min_duration: float = 1.0
    noise_floor_db: float = -55.0


def _times(num_samples: int) -> np.ndarray:
    return np.arange(num_samples) / SAMPLING_RATE


def _oscillator(frequencies: np.ndarray) -> np.ndarray:
    """A sine whose instantaneous frequency (Hz, one value per sample) follows `frequencies`."""
    return np.sin(2 * np.pi * np.cumsum(frequencies) / SAMPLING_RATE)


def _tone(params: dict, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    return _oscillator(np.full(num_samples, params["frequency"]))


def _chirp(params: dict, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """An exponential sweep from `start_hz` to `end_hz`."""
    progress = np.linspace(0.0, 1.0, num_samples)
    return _oscillator(params["start_hz"] * (params["end_hz"] / params["start_hz"]) ** progress)


def _noise(params: dict, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Noise with a 1/f^`exponent` power spectrum (0 white, 1 pink, 2 brown), flat below 50 Hz and without DC."""
    spectrum = np.fft.rfft(rng.standard_normal(num_samples))
    frequencies = np.maximum(np.fft.rfftfreq(num_samples, 1 / SAMPLING_RATE), 50.0)
    spectrum[0] = 0.0
    return np.fft.irfft(spectrum / frequencies ** (params["exponent"] / 2), num_samples)


def _click(num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """A 2 ms exponentially decaying noise burst."""
    length = min(num_samples, int(0.002 * SAMPLING_RATE))
    return rng.standard_normal(length) * np.exp(-np.arange(length) / (0.0004 * SAMPLING_RATE))


def _clicks(params: dict, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Clicks every 1/`rate_hz` seconds (a single click when `rate_hz` is 0)."""
    wave = np.zeros(num_samples)
    period = int(SAMPLING_RATE / params["rate_hz"]) if params["rate_hz"] else num_samples
    for start in range(0, num_samples, period):
        burst = _click(num_samples - start, rng)
        wave[start : start + len(burst)] += burst
    return wave


def _siren(params: dict, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """A wail between `low_hz` and `high_hz` with a `period` in seconds, plus its second harmonic."""
    sweep = 0.5 - 0.5 * np.cos(2 * np.pi * _times(num_samples) / params["period"])
    frequencies = params["low_hz"] + (params["high_hz"] - params["low_hz"]) * sweep
    return _oscillator(frequencies) + 0.3 * _oscillator(2 * frequencies)


def _tremolo(params: dict, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """An amplitude-modulated tone."""
    envelope = 1 - params["depth"] * (0.5 + 0.5 * np.sin(2 * np.pi * params["rate_hz"] * _times(num_samples)))
    return envelope * _tone(params, num_samples, rng)


def _vibrato(params: dict, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """A frequency-modulated tone (`depth` is relative to the frequency)."""
    modulation = 1 + params["depth"] * np.sin(2 * np.pi * params["rate_hz"] * _times(num_samples))
    return _oscillator(params["frequency"] * modulation)


def _note(midi: float, num_samples: int) -> np.ndarray:
    """A plucked, harmonic-rich note that decays over its length."""
    frequency = 440.0 * 2 ** ((midi - 69) / 12)
    times = _times(num_samples)
    harmonics = sum(np.sin(2 * np.pi * h * frequency * times) / h**1.5 for h in range(1, 5))
    return harmonics * np.exp(-3.0 * times / max(times[-1], 1e-3))


def _melody(params: dict, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """`midi_notes` played one after another, each `note_seconds` long."""
    note_samples = int(params["note_seconds"] * SAMPLING_RATE)
    wave = np.zeros(num_samples)
    for index, midi in enumerate(params["midi_notes"]):
        start = index * note_samples
        wave[start : start + note_samples] = _note(midi, note_samples)[: max(0, num_samples - start)]
    return wave


def _chord(params: dict, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """`midi_notes` played together."""
    return sum(_note(midi, num_samples) for midi in params["midi_notes"])


def _silence(params: dict, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    return np.zeros(num_samples)


SIGNALS: dict[str, Callable[[dict, int, np.random.Generator], np.ndarray]] = {
    "tone": _tone,
    "chirp": _chirp,
    "noise": _noise,
    "clicks": _clicks,
    "siren": _siren,
    "tremolo": _tremolo,
    "vibrato": _vibrato,
    "melody": _melody,
    "chord": _chord,
    "silence": _silence,
}


def _fade(wave: np.ndarray) -> np.ndarray:
    """Applies 10 ms linear fades at both ends (no clicks at event boundaries)."""
    length = min(int(FADE_SECONDS * SAMPLING_RATE), len(wave) // 2)
    if length:
        ramp = np.linspace(0.0, 1.0, length)
        wave[:length] *= ramp
        wave[-length:] *= ramp[::-1]
    return wave


def _event_wave(event: Event, speech: Mapping[Speech, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """The event's samples, peak-normalised then scaled by its gain."""
    if event.params["kind"] == "speech":
        wave = speech[event.params["speech"]].astype(np.float64) / SPEECH_PEAK
    else:
        num_samples = max(1, int(round(event.params["duration"] * SAMPLING_RATE)))
        wave = SIGNALS[event.params["kind"]](event.params, num_samples, rng)
        if event.params["kind"] != "clicks":
            wave = _fade(wave)
    peak = np.abs(wave).max()
    return wave / peak * 10 ** (event.params["gain_db"] / 20) if peak > 0 else wave


def render_clip(clip: Clip, speech: Mapping[Speech, np.ndarray]) -> np.ndarray:
    """
    Mixes a clip's events at their onsets over a faint noise floor, then pads it with silence to `min_duration`.

    Args:
        clip: the clip to render.
        speech: the audio of every `Speech` the clip uses (from `synthesize_speech`).

    Returns:
        float32 samples at 16 kHz, peak ≤ 0.99.
    """
    rng = np.random.default_rng(clip.seed)
    placed, end, previous_onset = [], 0.0, -np.inf
    for event in clip.events:
        wave = _event_wave(event, speech, rng)
        onset = max(end + event.gap, previous_onset + MIN_ONSET_SPACING, 0.0)
        start = int(round(onset * SAMPLING_RATE))
        placed.append((start, wave))
        end, previous_onset = max(end, (start + len(wave)) / SAMPLING_RATE), onset
    content = np.zeros(max(start + len(wave) for start, wave in placed) + int(0.1 * SAMPLING_RATE))
    for start, wave in placed:
        content[start : start + len(wave)] += wave
    padding = max(0, int(round(clip.min_duration * SAMPLING_RATE)) - len(content))
    lead = int(rng.integers(0, padding + 1))
    samples = np.concatenate([np.zeros(lead), content, np.zeros(padding - lead)])
    samples += rng.standard_normal(len(samples)) * 10 ** (clip.noise_floor_db / 20)
    return (samples * min(1.0, 0.99 / np.abs(samples).max())).astype(np.float32)


def encode_wav(samples: np.ndarray) -> bytes:
    """16-bit PCM WAV bytes of 16 kHz samples (deterministic: no timestamps in the header)."""
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, SAMPLING_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def _speak(speech: Speech) -> np.ndarray:
    """Runs espeak-ng (22.05 kHz WAV on stdout) and resamples to 16 kHz, peak-normalised to -3 dBFS."""
    command = ["espeak-ng", "-v", speech.voice, "-s", str(speech.speed), "-p", str(speech.pitch), "--stdout"]
    result = subprocess.run([*command, speech.text], capture_output=True, check=True)
    samples, rate = soundfile.read(io.BytesIO(result.stdout), dtype="float32")
    samples = resample(samples, rate, SAMPLING_RATE)
    return samples / np.abs(samples).max() * SPEECH_PEAK


def synthesize_speech(requests: Iterable[Speech], num_workers: int = 2) -> dict[Speech, np.ndarray]:
    """
    Synthesises every distinct utterance once with espeak-ng, `num_workers` processes at a time.

    Raises:
        `RuntimeError` when espeak-ng is not installed.
    """
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("PAL-Synth needs espeak-ng for speech: install it, e.g. `apt-get install espeak-ng`")
    unique = list(dict.fromkeys(requests))
    with ThreadPoolExecutor(num_workers) as pool:
        waves = list(tqdm(pool.map(_speak, unique), total=len(unique), desc="espeak-ng"))
    return dict(zip(unique, waves))
