"""PalProcessor: model inputs from text + audio (design.md §1 "Clips in the text", §3 model inputs, §6 bad input)."""

import copy
import functools
import http.server
import io
import math
import re
import shutil
import threading
from pathlib import Path

import jinja2
import numpy as np
import pytest
import soundfile
import torch
from encoder_fixtures import *  # noqa: F403
from helpers import WAVEFORM_WINDOW, build_inputs
from transformers import AutoFeatureExtractor, AutoProcessor, ClapFeatureExtractor
from transformers.dynamic_module_utils import get_imports

from modeling_pal import PalForConditionalGeneration, PalProcessor, processing_pal
from modeling_pal.processing_pal import resample

DOCS = Path(__file__).resolve().parents[1] / "docs" / "processing.md"
RATE = 16000
ATOL_CHANGE = 1e-4  # a max abs logit difference above this counts as "changes"
FAMILIES = ("whisper", "clap", "ast", "wav2vec2", "hubert", "data2vec-audio")
# seconds per window of the tiny encoders (encoder_fixtures.py, conftest.py); waveform windows as in helpers.py
WINDOW_SECONDS = {"whisper": 2.0, "clap": 1.0, "ast": 0.655, "wav2vec2": WAVEFORM_WINDOW / RATE}


@pytest.fixture(scope="module")
def pal(pal_model, tiny_llm_dir, tiny_whisper_dir):
    """Factory: `pal(family, integration, **config_overrides)` → `(model, processor)`, both cached."""
    processors = {}

    def build(family: str = "llama", integration: str = "lal", **overrides):
        model = pal_model(family, integration, **overrides)
        if id(model) not in processors:
            processors[id(model)] = PalProcessor.from_components(
                tiny_llm_dir(family), {"whisper": tiny_whisper_dir}, config=model.config
            )
        return model, processors[id(model)]

    return build


@pytest.fixture(scope="module")
def composed(tiny_llm_dir, tiny_encoder_dir):
    """
    Factory: `composed(encoders, integration)` → `(model, processor)` of a Llama PAL with tiny encoders of these
    families (in slot order), LAL from layer 2, both cached. Waveform windows are helpers.py's 0.5 s.
    """
    built = {}

    def build(encoders: tuple[str, ...], integration: str = "lal"):
        if (encoders, integration) not in built:
            torch.manual_seed(0)
            checkpoints = {family: tiny_encoder_dir(family) for family in encoders}
            lal = {} if integration == "plits" else {"lal_start_layer": 2}
            model = PalForConditionalGeneration.from_components(
                tiny_llm_dir("llama"), checkpoints, integration=integration, **lal
            ).eval()
            processor = PalProcessor.from_components(
                tiny_llm_dir("llama"), checkpoints, model.config, waveform_window_seconds=WINDOW_SECONDS["wav2vec2"]
            )
            built[encoders, integration] = model, processor
        return built[encoders, integration]

    return build


def noise(seconds: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(int(RATE * seconds)).astype(np.float32) * 0.1


def beep(seconds: float, frequency: float = 1000.0) -> np.ndarray:
    """A loud sine at 16 kHz."""
    t = np.arange(int(RATE * seconds)) / RATE
    return (0.9 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def tones(seconds: float, rate: int) -> np.ndarray:
    """A chord below 4 kHz, so that 8 kHz and 16 kHz renderings are the same signal."""
    t = np.arange(int(seconds * rate)) / rate
    return sum(np.sin(2 * np.pi * f * t) * 0.2 for f in (220.0, 700.0, 1900.0)).astype(np.float32)


@torch.no_grad()
def last_logits(model, inputs) -> torch.Tensor:
    """Last-position logits, with positions counted from each sample's first real token (as `generate` does)."""
    position_ids = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    return model(**inputs, position_ids=position_ids).logits[:, -1]


def changes(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a - b).abs().max().item() > ATOL_CHANGE


def ask(processor, *clips, question: str = "what do you hear?") -> str:
    return "".join(processor.audio_token for _ in clips) + f" {question}"


# ----------------------------------------------------------------------------------------------------------------------
# Bad input (design.md §6)
# ----------------------------------------------------------------------------------------------------------------------

BAD_CLIPS = {
    "empty": (np.zeros(0, dtype=np.float32), "empty"),
    "nan": (np.array([0.0, np.nan, 0.1] * 100, dtype=np.float32), "NaN or infinite"),
    "inf": (np.array([0.0, np.inf, 0.1] * 100, dtype=np.float32), "NaN or infinite"),
    "strings": (np.array(["a", "b"]), "numeric"),
    "objects": (np.array([object(), object()]), "numeric"),
    "rank 3": (np.zeros((2, 2, 100), dtype=np.float32), "1-D .mono. or 2-D"),
    "no channel axis": (np.zeros((100, 100), dtype=np.float32), "channel axis"),
    "dict without audio": ({"foo": 1}, "none of 'array', 'bytes' or 'path'"),
    "undecodable bytes": (b"not a wav file at all", "cannot decode"),
}


@pytest.mark.parametrize("name", BAD_CLIPS)
def test_bad_audio_raises_naming_the_problem(name, pal):
    _, processor = pal()
    clip, message = BAD_CLIPS[name]
    with pytest.raises(ValueError, match=message) as error:
        processor(text=ask(processor, clip), audio=[clip])
    assert "prompt 0, clip 0" in str(error.value)


BAD_CALLS = {  # processor(text=..., audio=...) overrides of a one-clip call; "{a}" is the audio token
    "no prompt": ({"text": []}, "needs text"),
    "rate 0": ({"sampling_rate": 0}, r"sampling_rate must be a positive integer \(Hz\), got 0"),
    "negative rate": ({"sampling_rate": -RATE}, "positive integer .Hz., got -16000"),
    "fractional rate": ({"sampling_rate": 22050.9}, "positive integer .Hz., got 22050.9"),
    "rate as text": ({"sampling_rate": "16000"}, "positive integer .Hz., got '16000'"),
    "dict rate 0": ({"audio": {"array": noise(0.5, 0), "sampling_rate": 0}}, "positive integer .Hz., got 0"),
    "None as a clip": ({"text": ["{a}{a}"], "audio": [noise(0.5, 0), None]}, "prompt 0, clip 1: audio is None"),
    "None for a prompt": (
        {"text": ["{a}{a}", "no audio", "{a}"], "audio": [[noise(0.5, 0)] * 2, None, [noise(0.5, 0)]]},
        "audio of prompt 1 is None; give `\\[\\]`",
    ),
    "resampled to nothing": (
        {"audio": {"array": np.full(1, 0.1, np.float32), "sampling_rate": 44100}},
        "prompt 0, clip 0 is too short: resampled from 44100 Hz to the 16000 Hz of encoder slot 0",
    ),
    "an image": ({"images": np.zeros((8, 8, 3), np.uint8)}, "PAL takes text and audio only, got images"),
    "a video": ({"videos": [np.zeros((2, 8, 8, 3), np.uint8)]}, "PAL takes text and audio only, got videos"),
    "resampled to nothing, in a batch": (
        {"text": ["{a}", "{a}"], "audio": [noise(0.5, 0), {"array": np.full(1, 0.1), "sampling_rate": 48000}]},
        "prompt 1, clip 0 is too short",
    ),
}


@pytest.mark.parametrize("name", BAD_CALLS)
def test_bad_call_raises_naming_the_problem(name, pal):
    _, processor = pal()
    overrides, message = BAD_CALLS[name]
    call = {"text": ["{a} what?"], "audio": [noise(0.5, 0)], **overrides}
    texts = [text.format(a=processor.audio_token) for text in call.pop("text")]
    with pytest.raises(ValueError, match=message):
        processor(text=texts, **call)


@pytest.mark.parametrize("text", ([{"role": "user", "content": "hi"}], 5, [None], b"bytes"), ids=type)
def test_text_that_is_not_prompts_raises(text, pal):
    """A chat given as `text` (instead of to `apply_chat_template`) or non-strings failed with an AttributeError."""
    _, processor = pal()
    with pytest.raises(ValueError, match=r"text takes a prompt or a list of prompts .*apply_chat_template"):
        processor(text=text, audio=noise(0.5, 0))


def test_missing_file_raises(pal, tmp_path):
    _, processor = pal()
    with pytest.raises(FileNotFoundError, match="nope.wav"):
        processor(text=ask(processor, 1), audio=str(tmp_path / "nope.wav"))


@pytest.mark.parametrize(
    "texts,audio,counts",
    [
        (["{a}{a} two clips"], [noise(1, 0)], (2, 1)),
        (["{a} one clip"], [noise(1, 0), noise(1, 1)], (1, 2)),
        (["no clip"], [noise(1, 0)], (0, 1)),
        (["{a} one", "{a}{a} two"], [[noise(1, 0)], [noise(1, 1)]], (2, 1)),
        (["{a} one"], None, (1, 0)),
    ],
)
def test_clip_count_mismatch_names_both_counts(texts, audio, counts, pal):
    _, processor = pal()
    texts = [text.format(a=processor.audio_token) for text in texts]
    pattern = rf"\b{counts[0]} {re.escape(processor.audio_token)} tokens but {counts[1]} audio clips"
    with pytest.raises(ValueError, match=pattern):
        processor(text=texts, audio=audio)


def test_longer_than_max_audio_seconds_raises(pal):
    _, processor = pal()
    with pytest.raises(ValueError, match=r"601\.0 s long, more than max_audio_seconds=600"):
        processor(text=ask(processor, 1), audio=np.zeros(601 * RATE, dtype=np.float32))


def test_unknown_encoder_type_raises(pal):
    _, processor = pal()
    settings = [{**processor.audio_encoders[0], "model_type": "bark"}]
    with pytest.raises(ValueError, match="Unsupported audio encoder type 'bark'"):
        PalProcessor(processor.tokenizer, processor.feature_extractor, audio_encoders=settings)


def test_truncation_into_audio_tokens_raises(pal):
    _, processor = pal("llama", "plits")
    with pytest.raises(ValueError, match="audio_placeholder"):
        processor(text=ask(processor, 1), audio=noise(1, 0), truncation=True, max_length=8)


def test_multichannel_is_downmixed(pal):
    _, processor = pal()
    mono = noise(1.5, 3)
    expected = processor(text=ask(processor, 1), audio=mono)["audio_features_0"]
    for stereo in (np.stack([mono, mono]), np.stack([mono, mono], axis=1)):
        features = processor(text=ask(processor, 1), audio=stereo)["audio_features_0"]
        torch.testing.assert_close(features, expected, rtol=0, atol=1e-6)


def test_files_with_more_than_eight_channels_are_downmixed(pal, tmp_path):
    """
    A 12-channel file (a microphone array) is down-mixed like any file, also through `datasets`; it was refused, as
    only raw arrays need the channel axis told apart by its size (≤ 8).
    """
    import datasets

    _, processor = pal()
    channels = np.stack([tones(1.0, RATE) * (k + 1) / 12 for k in range(12)], axis=1)
    path = tmp_path / "microphones.wav"
    soundfile.write(path, channels, RATE, subtype="FLOAT")
    expected = processor(text=ask(processor, 1), audio=channels.mean(axis=1))["audio_features_0"]
    decoder = datasets.Dataset.from_dict({"audio": [str(path)]}).cast_column("audio", datasets.Audio())[0]["audio"]
    for clip in (str(path), path.read_bytes(), decoder):
        actual = processor(text=ask(processor, 1), audio=[clip])["audio_features_0"]
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-4)  # torch and numpy sum in other orders


def test_a_list_of_lists_is_a_list_of_mono_clips(pal):
    _, processor = pal()
    first, second = noise(1.0, 6), noise(1.0, 7)
    expected = processor(text=ask(processor, first, second), audio=[first, second])
    listed = processor(text=ask(processor, first, second), audio=[first.tolist(), second.tolist()])
    assert all(torch.equal(listed[name], expected[name]) for name in expected)


def test_datasets_columns_are_lists(pal):
    """`ds["text"]` and `ds["audio"]` (`datasets` `Column`s, not lists) are a batch of prompts and its clips."""
    import datasets

    _, processor = pal()
    rows = {"text": [ask(processor, 1), ask(processor, 1)], "audio": [noise(1.0, 6), noise(0.5, 7)]}
    dataset = datasets.Dataset.from_dict(rows)
    expected = processor(text=rows["text"], audio=rows["audio"])
    actual = processor(text=dataset["text"], audio=dataset["audio"])
    assert all(torch.equal(actual[name], expected[name]) for name in expected)


def test_a_datasets_column_of_chats_is_a_batch(pal):
    """`apply_chat_template(ds["messages"])` (a `datasets` `Column`) gives what the same chats as a list give."""
    import datasets

    _, processor = pal()
    chats = [
        [{"role": "user", "content": [{"type": "audio", "audio": noise(1.0, 8)}, {"type": "text", "text": q}]}]
        for q in ("what is it?", "is it loud or quiet?")
    ]
    column = datasets.Dataset.from_dict({"messages": chats})["messages"]
    options = dict(tokenize=True, return_dict=True, return_tensors="pt", add_generation_prompt=True)
    expected = processor.apply_chat_template(chats, **options)
    actual = processor.apply_chat_template(column, **options)
    assert actual.keys() == expected.keys()
    assert all(torch.equal(actual[name], expected[name]) for name in expected)


def test_float_tensors_of_any_dtype_are_taken(pal):
    """bfloat16 (which numpy lacks), float16 and float64 tensors, and tensors that require grad, are read as floats."""
    _, processor = pal()
    tensor = torch.from_numpy(tones(1.0, RATE))
    for clip in (tensor.bfloat16(), tensor.half(), tensor.double(), tensor.clone().requires_grad_()):
        expected = processor(text=ask(processor, 1), audio=[clip.detach().float().numpy()])["audio_features_0"]
        assert torch.equal(processor(text=ask(processor, 1), audio=[clip])["audio_features_0"], expected), clip.dtype


def test_integer_pcm_is_scaled_like_the_file(pal, tmp_path):
    """int16 as `scipy.io.wavfile.read` returns it equals the file; every integer dtype is scaled by its range."""
    _, processor = pal()
    soundfile.write(tmp_path / "pcm.wav", tones(1.0, RATE), RATE, subtype="PCM_16")
    pcm16, _ = soundfile.read(tmp_path / "pcm.wav", dtype="int16")
    pcm8 = (pcm16 // 256).astype(np.int8)

    def features(clip) -> torch.Tensor:
        return processor(text=ask(processor, 1), audio=[clip])["audio_features_0"]

    from_file = features(str(tmp_path / "pcm.wav"))
    for clip in (pcm16, torch.from_numpy(pcm16), pcm16.astype(np.int32) * 65536):
        assert torch.equal(features(clip), from_file)
    from_float = features(pcm8 / np.float32(128))
    for clip in (pcm8, (pcm8.astype(np.int16) + 128).astype(np.uint8)):
        assert torch.equal(features(clip), from_float)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # soundfile's callbacks try to seek
def test_formats_libsndfile_lacks_are_decoded_with_torchcodec(pal, tmp_path):
    """An .m4a (AAC) file, as phones record them, was refused ("Format not recognised"); torchcodec decodes it."""
    from torchcodec.decoders import AudioDecoder
    from torchcodec.encoders import AudioEncoder

    _, processor = pal()
    path = tmp_path / "phone.m4a"
    AudioEncoder(torch.from_numpy(tones(1.0, RATE))[None], sample_rate=RATE).to_file(str(path))
    decoded = AudioDecoder(str(path)).get_all_samples()
    text = ask(processor, 1)
    expected = processor(text=text, audio=decoded.data[0].numpy(), sampling_rate=decoded.sample_rate)
    for clip in (str(path), path.read_bytes(), io.BytesIO(path.read_bytes())):
        assert torch.equal(processor(text=text, audio=[clip])["audio_features_0"], expected["audio_features_0"])
    assert "torchcodec" not in get_imports(processing_pal.__file__)  # remote-code processors do not require it
    with pytest.raises(ValueError, match="prompt 0, clip 0: cannot decode audio"):  # not "seek" from io
        processor(text=text, audio=[Unseekable(path.read_bytes())])


class Unseekable(io.RawIOBase):
    """A binary stream that reads once and cannot seek, like a pipe or a socket."""

    def __init__(self, data: bytes):
        self.data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        chunk = self.data.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


def test_encoded_audio_forms_agree(pal, tmp_path):
    """Bytes, bytearray, memoryview and binary file objects are decoded like the path."""
    _, processor = pal()
    path = tmp_path / "clip.wav"
    soundfile.write(path, noise(1.0, 5), 44100)
    data = path.read_bytes()
    expected = processor(text=ask(processor, 1), audio=str(path))["audio_features_0"]
    with path.open("rb") as file:
        for clip in (data, bytearray(data), memoryview(data), {"bytes": bytearray(data)}, io.BytesIO(data), file):
            assert torch.equal(processor(text=ask(processor, 1), audio=[clip])["audio_features_0"], expected)


def test_datasets_audio_decoders_give_the_files_features_every_time(pal, tmp_path):
    """
    `datasets` Audio columns give torchcodec `AudioDecoder`s. One cast to another rate resamples in ffmpeg and decodes
    wrong samples from its second use on (reading `row["audio"]["array"]` first is one); the processor decodes the file
    behind it afresh, at the file's own rate, so every use gives the path's features (stereo down-mixed).
    """
    import datasets

    _, processor = pal()
    path = tmp_path / "stereo.wav"
    soundfile.write(path, np.stack([tones(1.5, 44100), tones(1.5, 44100)[::-1]], axis=1), 44100)
    expected = processor(text=ask(processor, 1), audio=str(path))["audio_features_0"]
    features = datasets.Features({"audio": datasets.Audio(sampling_rate=RATE)})
    for source in (str(path), {"bytes": path.read_bytes(), "path": None}):
        decoder = datasets.Dataset.from_dict({"audio": [source]}, features=features)[0]["audio"]
        assert decoder["array"].shape == (1.5 * RATE,)
        for _ in range(2):
            actual = processor(text=ask(processor, 1), audio=[decoder])["audio_features_0"]
            torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------------
# Nothing is lost: every window, every clip, the right rate
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "encoder,integration,seconds",
    [
        ("whisper", "lal", 25.0),
        ("whisper", "plits", 25.0),
        ("clap", "lal", 25.0),
        ("clap", "lal", 25.5),
        ("ast", "lal", 25.0),
        ("wav2vec2", "lal", 25.0),
    ],
)
def test_no_window_is_dropped(encoder, integration, seconds, composed):
    """Changing only the last 3 s of a long clip changes the logits, as does a change in the first window."""
    model, processor = composed((encoder,), integration)
    clip = noise(seconds, 4)
    late, early = clip.copy(), clip.copy()
    late[-3 * RATE :] = beep(3.0)  # inside the last windows only
    first_window = int(WINDOW_SECONDS[encoder] * RATE)
    early[:first_window] = beep(first_window / RATE)  # control: the first window
    inputs = processor(text=ask(processor, 1), audio=clip)
    windows = math.ceil(round(seconds / WINDOW_SECONDS[encoder], 6))
    assert inputs["audio_features_0"].shape[1] == windows
    assert inputs["audio_window_clip_0"].tolist() == [[0] * windows]
    reference = last_logits(model, inputs)
    assert changes(last_logits(model, processor(text=ask(processor, 1), audio=late)), reference)
    assert changes(last_logits(model, processor(text=ask(processor, 1), audio=early)), reference)


def test_sampling_rate_is_honoured(pal):
    model, processor = pal()
    text = ask(processor, 1)
    reference = last_logits(model, processor(text=text, audio=tones(3.0, RATE)))
    at_8k = last_logits(model, processor(text=text, audio=tones(3.0, 8000), sampling_rate=8000))
    taken_as_16k = last_logits(model, processor(text=text, audio=tones(3.0, 8000)))
    assert (at_8k - reference).abs().max() < (taken_as_16k - reference).abs().max()


def test_file_is_decoded_at_its_own_rate(pal, tmp_path):
    _, processor = pal()
    signal = tones(2.5, 44100)
    soundfile.write(tmp_path / "tones.wav", signal, 44100, subtype="FLOAT")
    from_file = processor(text=ask(processor, 1), audio=str(tmp_path / "tones.wav"))
    from_array = processor(text=ask(processor, 1), audio=resample(signal, 44100, RATE))
    torch.testing.assert_close(from_file["audio_features_0"], from_array["audio_features_0"], rtol=0, atol=1e-4)
    assert torch.equal(from_file["input_ids"], from_array["input_ids"])


def test_ten_minutes_cost_one_lal_position_and_its_end_counts(pal):
    model, processor = pal()
    long_clip = noise(600.0, 7)
    changed = long_clip.copy()
    changed[-10 * RATE :] = 0.0  # the last 10 s (5 of 300 windows)
    long_inputs = processor(text=ask(processor, 1), audio=long_clip)
    short_inputs = processor(text=ask(processor, 1), audio=noise(2.0, 9))
    assert long_inputs["input_ids"].shape == short_inputs["input_ids"].shape
    assert long_inputs["audio_features_0"].shape[1] == 300
    assert changes(
        last_logits(model, long_inputs), last_logits(model, processor(text=ask(processor, 1), audio=changed))
    )


@pytest.mark.parametrize("integration", ("lal", "plits"))
def test_two_clips_in_one_prompt(integration, pal):
    model, processor = pal("llama", integration)
    first, second, silence = noise(1.5, 10) * 5, tones(1.5, RATE), np.zeros(int(1.5 * RATE), dtype=np.float32)
    text = f"first {processor.audio_token} then {processor.audio_token} which is louder?"
    reference = last_logits(model, processor(text=text, audio=[first, second]))
    for audio in ([silence, second], [first, silence], [second, first]):
        assert changes(last_logits(model, processor(text=text, audio=audio)), reference)
    one = processor(text=ask(processor, 1), audio=first)["input_ids"]
    two = processor(text=ask(processor, 1, 2), audio=[first, second])["input_ids"]
    for token_id in (processor.audio_token_id, processor.audio_placeholder_token_id):
        assert (two == token_id).sum() == 2 * (one == token_id).sum()


def test_causal_visibility_hides_a_later_turns_clip(pal):
    model, processor = pal("llama", "lal")
    assert model.config.lal_audio_visibility == "causal"

    def chat(second_clip):
        return [
            {"role": "user", "content": [{"type": "audio", "audio": noise(1.0, 14)}, {"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": "a dog"},
            {"role": "user", "content": [{"type": "audio", "audio": second_clip}, {"type": "text", "text": "and?"}]},
        ]

    a = processor.apply_chat_template(chat(noise(1.0, 15)), tokenize=True, return_dict=True)
    b = processor.apply_chat_template(chat(noise(1.0, 16)), tokenize=True, return_dict=True)
    second_marker = (a["input_ids"][0] == processor.audio_token_id).nonzero()[1].item()
    with torch.no_grad():
        logits_a, logits_b = model(**a).logits[0], model(**b).logits[0]
    torch.testing.assert_close(logits_a[:second_marker], logits_b[:second_marker], rtol=0, atol=1e-6)
    assert changes(logits_a[-1], logits_b[-1])


# ----------------------------------------------------------------------------------------------------------------------
# Every encoder family: the processor builds the inputs the model tests build by hand (tests/helpers.py)
# ----------------------------------------------------------------------------------------------------------------------

# sample counts with a partial last window in every family (whisper 2 s, CLAP 1 s, AST 0.655 s, waveform 0.5 s)
CLIP_LENGTHS = (36803, 5921, 16800)


@pytest.mark.parametrize(
    "encoders,integration", [((family,), "plits") for family in FAMILIES] + [(("whisper", "clap"), "pal")]
)
def test_processor_builds_the_model_tests_inputs(encoders, integration, composed, tiny_encoder_dir):
    model, processor = composed(encoders, integration)
    a, b, c = (noise(length / RATE, seed) for seed, length in enumerate(CLIP_LENGTHS, start=50))
    texts = [f"compare {processor.audio_token} with {processor.audio_token} please", f"{processor.audio_token} hm?"]
    texts.append("no audio here")

    def ids(text: str) -> list[int]:
        return processor.tokenizer(text, add_special_tokens=False)["input_ids"]

    segments = [[ids("compare "), a, ids(" with "), b, ids(" please")], [c, ids(" hm?")], [ids("no audio here")]]
    extractors = [AutoFeatureExtractor.from_pretrained(tiny_encoder_dir(family)) for family in encoders]
    expected = build_inputs(model, extractors, segments)
    actual = processor(text=texts, audio=[a, b, c], add_special_tokens=False)

    assert actual.keys() == expected.keys()
    real = expected["attention_mask"].bool()
    assert torch.equal(actual["attention_mask"], expected["attention_mask"])
    assert torch.equal(actual["input_ids"][real], expected["input_ids"][real])  # the pad ids differ
    for slot in range(len(encoders)):
        features, mask = actual[f"audio_features_{slot}"], actual[f"audio_feature_mask_{slot}"]
        assert torch.equal(features, expected[f"audio_features_{slot}"])
        assert torch.equal(mask, expected[f"audio_feature_mask_{slot}"].long())
        assert torch.equal(actual[f"audio_window_clip_{slot}"], expected[f"audio_window_clip_{slot}"])
    assert torch.isfinite(last_logits(model, actual)).all()


def test_clap_windows_and_masks(composed):
    """1 s windows of 101 mel frames (hop 160); frame i is valid when i · hop < samples; zero padding."""
    _, processor = composed(("clap",), "lal")
    inputs = processor(text=ask(processor, 1), audio=noise(2.5, 60))
    assert tuple(inputs["audio_features_0"].shape) == (1, 3, 1, 101, 16)
    assert inputs["audio_feature_mask_0"].sum(-1).tolist() == [[100, 100, 50]]
    last = inputs["audio_features_0"][0, 2, 0]  # 0.5 s of noise, then padding
    assert (last[:50] > -100).all()
    assert (last[60:] == -100).all()  # zero padding at CLAP's -100 dB floor, not the repeated clip ("repeatpad")


def test_clap_features_equal_the_extractors_zero_padded_window(composed):
    """The processor transforms only a window's audio; the result equals the extractor run on the padded window."""
    _, processor = composed(("clap",), "lal")
    extractor = processor.feature_extractor
    clip = noise(0.37, 64) * 3
    inputs = processor(text=ask(processor, 1), audio=clip)
    at_rate = resample(clip, processor.sampling_rate, extractor.sampling_rate)
    expected = extractor(at_rate, sampling_rate=extractor.sampling_rate, padding="zeros", return_tensors="pt")
    torch.testing.assert_close(inputs["audio_features_0"][0, 0], expected["input_features"][0], rtol=0, atol=0)


@pytest.mark.parametrize("integration", ("lal", "plits"))
def test_clip_without_an_encoder_token_raises(integration, composed):
    """
    A clip shorter than one AST frame (25 ms) gives AST no token: it is refused, naming the clip and the encoder
    (LAL crashed in the model's reshape, PLITS dropped the clip from the text without a word). One frame is enough.
    """
    _, processor = composed(("ast",), integration)
    assert processor(text=ask(processor, 1), audio=noise(0.025, 72))["audio_feature_mask_0"].sum() == 1
    texts = [ask(processor, 1), ask(processor, 1, 2)]
    with pytest.raises(ValueError, match=r"prompt 1, clip 1 is too short for encoder slot 0 \(ast\): 24\.9 ms give"):
        processor(text=texts, audio=[noise(1.0, 70), noise(1.0, 71), noise(0.0249, 72)])


def test_ast_full_window_frames_every_sample_and_short_remainder_is_padding(composed):
    """
    A full AST window is `max_length` whole frames (63 hops + one 25 ms frame = 10 480 samples): all 64 frames are
    valid, so a change in its last samples reaches the features. A last window too short for one frame is all
    padding: no valid frames, no placeholders.
    """
    _, processor = composed(("ast",), "plits")
    window = 63 * 160 + 400
    clip = noise(window / RATE, 61)
    full = processor(text=ask(processor, 1), audio=clip)
    assert full["audio_feature_mask_0"].sum(-1).tolist() == [[64]]
    tail_changed = clip.copy()
    tail_changed[-80:] = 0.0
    tail_features = processor(text=ask(processor, 1), audio=tail_changed)["audio_features_0"]
    assert not torch.equal(tail_features[0, 0, -1], full["audio_features_0"][0, 0, -1])
    longer = processor(text=ask(processor, 1), audio=np.concatenate([clip, noise(0.01, 62)]))
    assert longer["audio_feature_mask_0"].sum(-1).tolist() == [[64, 0]]
    assert torch.equal(longer["input_ids"], full["input_ids"])
    assert torch.equal(longer["audio_features_0"][:, :1], full["audio_features_0"])


def test_waveform_window_is_a_setting_that_round_trips(composed, tiny_llm_dir, tiny_encoder_dir, tmp_path):
    model, processor = composed(("wav2vec2",), "lal")
    assert processor.waveform_window_seconds == 0.5
    inputs = processor(text=ask(processor, 1), audio=noise(1.2, 63))
    assert tuple(inputs["audio_features_0"].shape) == (1, 3, 8000)
    assert inputs["audio_feature_mask_0"].sum(-1).tolist() == [[8000, 8000, 3200]]
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert loaded.waveform_window_seconds == 0.5
    reloaded = loaded(text=ask(processor, 1), audio=noise(1.2, 63))
    assert all(torch.equal(inputs[key], reloaded[key]) for key in inputs)

    default = PalProcessor.from_components(
        tiny_llm_dir("llama"), {"wav2vec2": tiny_encoder_dir("wav2vec2")}, model.config
    )
    assert default.waveform_window_seconds == 30.0
    long_windows = default(text=ask(default, 1), audio=noise(31.0, 64))
    assert long_windows["audio_feature_mask_0"].sum(-1).tolist() == [[30 * RATE, RATE]]
    with pytest.raises(ValueError, match="waveform_window_seconds must be positive"):
        PalProcessor.from_components(
            tiny_llm_dir("llama"), {"wav2vec2": tiny_encoder_dir("wav2vec2")}, model.config, waveform_window_seconds=0
        )


def faded_tone(frequency: float, seconds: float, rate: int, amplitude: float = 0.002) -> np.ndarray:
    """A sine with 0.1 s raised-cosine fades, defined in continuous time so every rate renders the same signal."""
    t = np.arange(int(seconds * rate)) / rate
    envelope = np.sin(0.5 * np.pi * np.clip(np.minimum(t, seconds - t) / 0.1, 0, 1)) ** 2
    return (amplitude * envelope * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def test_clap_takes_a_44k_file_at_48k(composed, tiny_llm_dir, tiny_whisper_dir, tmp_path):
    """
    A 48 kHz CLAP extractor (the tiny model's 101 frames × 16 mels, hop 480; `repeatpad`/`fusion` as saved defaults,
    which the processor overrides): a 12 kHz tone in a 44.1 kHz file gives the features of the tone rendered at 48 kHz.
    The tone is quiet, so no mel band sits just above CLAP's -100 dB floor, where resampling noise would show.
    """
    model, _ = composed(("whisper", "clap"), "pal")
    ClapFeatureExtractor(
        feature_size=16, sampling_rate=48000, hop_length=480, max_length_s=1, frequency_min=50, frequency_max=14000
    ).save_pretrained(tmp_path / "clap48k")
    processor = PalProcessor.from_components(
        tiny_llm_dir("llama"), {"whisper": tiny_whisper_dir, "clap": str(tmp_path / "clap48k")}, model.config
    )
    soundfile.write(tmp_path / "tone.wav", faded_tone(12000.0, 2.5, 44100), 44100, subtype="FLOAT")
    from_file = processor(text=ask(processor, 1), audio=str(tmp_path / "tone.wav"))
    from_array = processor(text=ask(processor, 1), audio=faded_tone(12000.0, 2.5, 48000), sampling_rate=48000)
    features = from_array["audio_features_1"]
    assert tuple(features.shape) == (1, 3, 1, 101, 16)
    assert features[0, 1, 0, :, -1].min() > -60  # the 12 kHz band holds the tone (at 16 kHz it would be gone)
    torch.testing.assert_close(from_file["audio_features_1"], features, rtol=0, atol=1e-4)
    assert torch.equal(from_file["audio_feature_mask_1"], from_array["audio_feature_mask_1"])
    assert torch.equal(from_file["input_ids"], from_array["input_ids"])
    assert torch.isfinite(last_logits(model, from_file)).all()


def test_pal_chat_with_two_clips(composed):
    """Whisper (PLITS) + CLAP (LAL): placeholders come from Whisper only, then one marker per clip."""
    model, processor = composed(("whisper", "clap"), "pal")
    first, second = noise(2.5, 65), noise(1.2, 66)

    def chat(second_clip):
        return [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "compare "},
                    {"type": "audio", "audio": first},
                    {"type": "text", "text": " with "},
                    {"type": "audio", "audio": second_clip},
                ],
            }
        ]

    inputs = processor.apply_chat_template(chat(second), tokenize=True, return_dict=True, add_generation_prompt=True)
    ids = inputs["input_ids"][0].tolist()
    marker, placeholder = processor.audio_token_id, processor.audio_placeholder_token_id
    # Whisper: 2 s windows of 200 mel frames → ceil(frames / 2) tokens → stacks of 4
    whisper_counts = [math.ceil(100 / 4) + math.ceil(25 / 4), math.ceil(60 / 4)]
    runs = "".join("P" if i == placeholder else "M" if i == marker else "." for i in ids)
    assert re.findall(r"P+M|M", runs) == ["P" * whisper_counts[0] + "M", "P" * whisper_counts[1] + "M"]
    assert inputs["audio_window_clip_0"].tolist() == [[0, 0, 1]]  # Whisper: 2 s windows
    assert inputs["audio_window_clip_1"].tolist() == [[0, 0, 0, 1, 1]]  # CLAP: 1 s windows
    rendered = processor.apply_chat_template(chat(second), add_generation_prompt=True)
    from_text = processor(text=rendered, audio=[first, second], add_special_tokens=False)
    assert all(torch.equal(inputs[key], from_text[key]) for key in inputs)

    reference = last_logits(model, inputs)
    silent = processor.apply_chat_template(
        chat(np.zeros_like(second)), tokenize=True, return_dict=True, add_generation_prompt=True
    )
    assert changes(last_logits(model, silent), reference)
    generated = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert generated.shape == (1, inputs["input_ids"].shape[1] + 4)


# ----------------------------------------------------------------------------------------------------------------------
# Batching, chat and text forms, save / load
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family,integration", [("llama", "lal"), ("llama", "plits"), ("qwen2", "hybrid")])
def test_batch_equals_single_samples(family, integration, pal):
    model, processor = pal(family, integration)
    samples = [
        (ask(processor, 1), [noise(4.5, 20)]),
        ("no audio in this one, just a question?", []),
        (f"a {processor.audio_token} b {processor.audio_token} c", [noise(0.7, 21), noise(2.2, 22)]),
    ]
    batch = processor(text=[text for text, _ in samples], audio=[clips for _, clips in samples])
    assert batch["audio_window_clip_0"].tolist() == [[0, 0, 0], [-1, -1, -1], [0, 1, 1]]
    assert (batch["attention_mask"][:, -1] == 1).all()  # left padding
    assert processor.tokenizer.pad_token == {"llama": "<|finetune_right_pad_id|>", "qwen2": "<|endoftext|>"}[family]
    batched = last_logits(model, batch)
    for row, (text, clips) in enumerate(samples):
        single = last_logits(model, processor(text=text, audio=clips or None))
        torch.testing.assert_close(batched[row], single[0], rtol=0, atol=1e-5)


def test_collate_equals_one_call(pal):
    """Separate calls merged by `collate` (as the pipeline batches) equal one call, left or right padded."""
    _, processor = pal("qwen2", "hybrid")
    samples = [
        ("no audio in this one, just a question?", None),
        (ask(processor, 1), [noise(4.5, 20)]),
        (f"a {processor.audio_token} b {processor.audio_token} c", [noise(0.7, 21), noise(2.2, 22)]),
    ]
    for side in ("left", "right"):
        batch = processor(text=[t for t, _ in samples], audio=[c or [] for _, c in samples], padding_side=side)
        merged = processor.collate([processor(text=t, audio=c) for t, c in samples], padding_side=side)
        assert merged.keys() == batch.keys()
        assert all(torch.equal(merged[name], batch[name]) for name in batch), side


def test_the_tokenizers_padding_side_is_followed_by_every_entry_point(pal):
    """
    `processor.tokenizer.padding_side = "right"` (the usual switch for training) right-pads the batches of the
    processor and of `apply_chat_template`, as it did those of `collate`; they stayed left-padded.
    """
    processor = copy.deepcopy(pal()[1])
    texts = ["short", "a much longer prompt than that one"]
    chats = [[{"role": "user", "content": text}] for text in texts]
    for side, ends in (("left", [0, 1]), ("right", [1, 0])):
        processor.tokenizer.padding_side = side
        for batch in (
            processor(text=texts),
            processor.apply_chat_template(chats, tokenize=True, return_dict=True),
            processor.collate([processor(text=text) for text in texts]),
        ):
            assert batch["attention_mask"][0, [0, -1]].tolist() == ends, side


def test_flat_and_nested_audio_agree(pal):
    _, processor = pal("llama", "plits")
    texts = [ask(processor, 1), "text only", ask(processor, 1, 2)]
    clips = [noise(1.0, 23), noise(2.5, 24), noise(0.3, 25)]
    flat = processor(text=texts, audio=clips)
    nested = processor(text=texts, audio=[[clips[0]], [], clips[1:]])
    assert flat.keys() == nested.keys()
    assert all(torch.equal(flat[key], nested[key]) for key in flat)


def test_chat_and_text_forms_agree_and_keep_the_llm_template(pal, tmp_path):
    _, processor = pal("llama", "hybrid")
    soundfile.write(tmp_path / "clip.wav", noise(1.2, 26), RATE)
    array = noise(0.8, 27)
    chat = [
        {"role": "system", "content": "be brief"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "compare "},
                {"type": "audio", "path": str(tmp_path / "clip.wav")},
                {"type": "text", "text": " with "},
                {"type": "audio", "audio": array},
            ],
        },
    ]
    rendered = processor.apply_chat_template(chat, add_generation_prompt=True)
    text_only = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "compare X with X"}]
    original = processor.tokenizer.apply_chat_template(text_only, tokenize=False, add_generation_prompt=True)
    assert rendered == original.replace("X", processor.audio_token)
    from_chat = processor.apply_chat_template(chat, tokenize=True, return_dict=True, add_generation_prompt=True)
    from_text = processor(text=rendered, audio=[str(tmp_path / "clip.wav"), array], add_special_tokens=False)
    assert from_chat.keys() == from_text.keys()
    assert all(torch.equal(from_chat[key], from_text[key]) for key in from_chat)


def test_chat_url_audio_equals_the_file(pal, tmp_path):
    _, processor = pal()
    soundfile.write(tmp_path / "clip.wav", tones(1.5, 22050), 22050)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/clip.wav"
        chat = [{"role": "user", "content": [{"type": "audio", "url": url}, {"type": "text", "text": "?"}]}]
        from_url = processor.apply_chat_template(chat, tokenize=True, return_dict=True)
        server.shutdown()
    from_path = processor(text=ask(processor, 1), audio=str(tmp_path / "clip.wav"))
    assert torch.equal(from_url["audio_features_0"], from_path["audio_features_0"])


def test_unreachable_url_raises_naming_it(pal, tmp_path):
    """A URL answering 404, or nothing (refused, as offline), raises a ValueError naming the clip, the URL and why."""
    _, processor = pal()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/missing.wav"
        with pytest.raises(
            ValueError, match=rf"prompt 0, clip 0: cannot fetch audio {re.escape(url)}: HTTP Error 404"
        ):
            processor(text=ask(processor, 1), audio=url)
        server.shutdown()
    with pytest.raises(ValueError, match=rf"prompt 0, clip 0: cannot fetch audio {re.escape(url)}: .*refused"):
        processor(text=ask(processor, 1), audio=url)


def test_a_chat_template_passed_at_call_time_takes_audio_items(pal):
    """
    A template string given as `chat_template=`, or assigned to `processor.chat_template`, is wrapped like the
    processor's own: it rendered the content list as is and the call failed with "The text has 0 audio tokens but 1
    audio clips were given".
    """
    processor = copy.deepcopy(pal()[1])
    clip = noise(1.0, 80)
    chat = [{"role": "user", "content": [{"type": "audio", "audio": clip}, {"type": "text", "text": " what?"}]}]
    template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
    assert processor.apply_chat_template(chat, chat_template=template) == f"[user] {processor.audio_token} what?\n"
    inputs = processor.apply_chat_template(chat, chat_template=template, tokenize=True, return_dict=True)
    expected = processor(text=f"[user] {processor.audio_token} what?\n", audio=clip, add_special_tokens=False)
    assert all(torch.equal(inputs[name], expected[name]) for name in expected)
    processor.chat_template = template
    assert processor.apply_chat_template(chat) == f"[user] {processor.audio_token} what?\n"


@pytest.mark.parametrize(
    "item", ("a plain string", {"type": "text"}, {"text": "no type"}, {"type": "image", "url": "cat.png"}), ids=str
)
def test_chat_items_that_are_not_text_or_audio_raise_showing_the_item(item, pal):
    """A content item without a type or text said "got a  item", or raised jinja2's UndefinedError."""
    _, processor = pal()
    chat = [{"role": "user", "content": [item, {"type": "text", "text": "?"}]}]
    pattern = r'PAL chats take \{"type": "text", "text": ...\} and \{"type": "audio", ...\} items, got '
    with pytest.raises(jinja2.TemplateError, match=pattern + re.escape(str(item))):
        processor.apply_chat_template(chat)


def test_chat_arrays_take_the_given_sampling_rate(pal):
    _, processor = pal()
    chat = [{"role": "user", "content": [{"type": "audio", "audio": tones(1.0, 8000)}, {"type": "text", "text": "?"}]}]
    inputs = processor.apply_chat_template(
        chat, tokenize=True, return_dict=True, processor_kwargs={"sampling_rate": 8000}
    )
    expected = processor(text=ask(processor, 1), audio=tones(1.0, 8000), sampling_rate=8000)
    assert torch.equal(inputs["audio_features_0"], expected["audio_features_0"])


def test_transcription_request(pal):
    model, processor = pal("llama", "plits")
    clips = [noise(1.0, 28), noise(3.0, 29)]
    inputs = processor.apply_transcription_request(clips, language="English")
    request = f"{processor.transcription_prompt} Language: English."
    chats = [
        [{"role": "user", "content": [{"type": "audio", "audio": c}, {"type": "text", "text": request}]}]
        for c in clips
    ]
    expected = processor.apply_chat_template(chats, tokenize=True, return_dict=True, add_generation_prompt=True)
    assert all(torch.equal(inputs[key], expected[key]) for key in expected)
    assert inputs["audio_window_clip_0"].tolist() == [[0, -1], [0, 0]]
    generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert len(processor.post_process_multimodal_output(generated)) == 2


def test_save_load_roundtrip(pal, tmp_path):
    _, processor = pal("qwen2", "hybrid")
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is PalProcessor and loaded.chat_template == processor.chat_template
    saved_settings = {key: value for key, value in processor.to_dict().items() if key != "auto_map"}
    assert loaded.to_dict() == saved_settings
    assert loaded.tokenizer.padding_side == "left" and loaded.feature_extractor_1 is None
    chat = [{"role": "user", "content": [{"type": "audio", "audio": noise(2.5, 30)}, {"type": "text", "text": "?"}]}]
    expected = processor.apply_chat_template(chat, tokenize=True, return_dict=True)
    actual = loaded.apply_chat_template(chat, tokenize=True, return_dict=True)
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[key], actual[key]) for key in expected)


def test_a_folder_without_a_saved_processor_is_named(saved_pal_checkpoint, tmp_path):
    """A model saved without its processor: loading the processor failed in the tokenizer ("Couldn't instantiate
    the backend tokenizer ... sentencepiece or tiktoken")."""
    shutil.copy(Path(saved_pal_checkpoint("lal")) / "config.json", tmp_path)
    for load in (AutoProcessor.from_pretrained, PalProcessor.from_pretrained):
        with pytest.raises(ValueError, match=rf"{re.escape(str(tmp_path))} holds no saved PalProcessor"):
            load(tmp_path)


def test_token_id_mismatch_raises(pal, tiny_llm_dir, tiny_whisper_dir):
    model, processor = pal("qwen2", "lal")
    assert processor.audio_token_id == model.config.audio_token_id
    assert processor.audio_placeholder_token_id == model.config.audio_placeholder_token_id
    config = copy.deepcopy(model.config)
    config.audio_token_id += 1
    with pytest.raises(ValueError, match="model config says"):
        PalProcessor.from_components(tiny_llm_dir("qwen2"), {"whisper": tiny_whisper_dir}, config=config)


# ----------------------------------------------------------------------------------------------------------------------
# docs/processing.md: every python block runs, with each Hub id mapped to a tiny local checkpoint
# ----------------------------------------------------------------------------------------------------------------------


def test_docs_examples_run(tiny_llm_dir, tiny_whisper_dir, tiny_encoder_dir, tmp_path, monkeypatch):
    hub_ids = {
        "meta-llama/Llama-3.2-1B-Instruct": tiny_llm_dir("llama"),
        "openai/whisper-large-v3": tiny_whisper_dir,
        "laion/clap-htsat-unfused": tiny_encoder_dir("clap"),
        "facebook/hubert-base-ls960": tiny_encoder_dir("hubert"),
    }
    source = DOCS.read_text(encoding="utf-8")
    for hub_id, local in hub_ids.items():
        assert hub_id in source
        source = source.replace(f'"{hub_id}"', repr(local))
    blocks = re.findall(r"```python\n(.*?)```", source, flags=re.DOTALL)
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for block in blocks:
        exec(compile(block, str(DOCS), "exec"), namespace)
