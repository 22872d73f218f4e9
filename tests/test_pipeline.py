"""The "audio-text-to-text" pipeline (and "any-to-any") on a saved PAL checkpoint, with and without the package."""

import json
import pickle
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile
import torch
from encoder_fixtures import *  # noqa: F403
from helpers import assert_varied
from transformers import AutoModelForMultimodalLM, AutoProcessor, ClapFeatureExtractor, pipeline

from modeling_pal import AudioTextToTextPipeline, PalForConditionalGeneration, PalProcessor

NEW_TOKENS = 6


@pytest.fixture(scope="module")
def checkpoint(saved_pal_checkpoint) -> str:
    """A hybrid PAL (PLITS placeholders and a LAL marker per clip) saved with its processor in one folder; sharpened,
    so that its greedy outputs are varied and an input the pipeline lost or padded wrongly would change them."""
    return saved_pal_checkpoint("hybrid", sharpen=True)


@pytest.fixture(scope="module")
def loaded(checkpoint):
    return AutoModelForMultimodalLM.from_pretrained(checkpoint).eval(), AutoProcessor.from_pretrained(checkpoint)


@pytest.fixture(scope="module")
def cases(loaded, tmp_path_factory) -> dict[str, dict]:
    """Pipeline inputs by name: prompts with `text` + `audio` and chats, with a 16 kHz array and a 44.1 kHz file."""
    audio_token = loaded[1].audio_token
    array = np.random.default_rng(0).standard_normal(16000 * 3).astype(np.float32) * 0.1
    wav = str(tmp_path_factory.mktemp("audio") / "tone.wav")
    t = np.arange(int(44100 * 2.5)) / 44100
    soundfile.write(wav, 0.3 * np.sin(2 * np.pi * 440 * t), 44100, subtype="FLOAT")

    def chat(item: dict) -> list[dict]:
        return [{"role": "user", "content": [item, {"type": "text", "text": "what do you hear?"}]}]

    return {
        "text+array": {"text": f"{audio_token} what do you hear?", "audio": array},
        "text+44.1kHz path": {"text": f"{audio_token} what do you hear?", "audio": wav},
        "chat array": {"text": chat({"type": "audio", "audio": array})},
        "chat 44.1kHz path": {"text": chat({"type": "audio", "path": wav})},
    }


@pytest.fixture(scope="module")
def expected(loaded, cases) -> dict[str, tuple[torch.Tensor, int]]:
    """Per case, what `processor` + greedy `model.generate` give: the full sequence and the prompt length."""
    model, processor = loaded
    results = {}
    for name, case in cases.items():
        if isinstance(case["text"], list):
            inputs = processor.apply_chat_template(
                case["text"], add_generation_prompt=True, tokenize=True, return_dict=True
            )
        else:
            inputs = processor(text=case["text"], audio=case["audio"])
        ids = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)[0]
        results[name] = ids, inputs["input_ids"].shape[1]
    return results


def generated_ids(pipe, case: dict) -> torch.Tensor:
    return pipe(**case, max_new_tokens=NEW_TOKENS, return_tensors=True)[0]["generated_token_ids"]


def test_pipeline_equals_processor_and_generate(checkpoint, loaded, cases, expected):
    processor = loaded[1]
    assert_varied(torch.stack([ids[-NEW_TOKENS:] for ids, _ in expected.values()]), NEW_TOKENS, distinct=2)
    pipe = pipeline("audio-text-to-text", model=checkpoint)
    assert isinstance(pipe, AudioTextToTextPipeline) and isinstance(pipe.processor, PalProcessor)
    for name, case in cases.items():
        ids, prompt_length = expected[name]
        assert torch.equal(generated_ids(pipe, case), ids), name
        new_text = pipe(**case, max_new_tokens=NEW_TOKENS, return_full_text=False)[0]["generated_text"]
        assert new_text == processor.decode(ids[prompt_length:], skip_special_tokens=True), name


def test_inputs_that_would_be_dropped_are_refused(checkpoint, cases):
    """
    A chat holds its clips as audio items: `audio=` beside one chat or a list of them was dropped without a word; so
    were `images=` and `videos=` beside a prompt with audio.
    """
    pipe = pipeline("audio-text-to-text", model=checkpoint)
    chat = [{"role": "user", "content": "what do you hear?"}]
    for text in (chat, [chat, chat]):
        with pytest.raises(ValueError, match=r"audio= goes with text prompts; .* \{\"type\": \"audio\""):
            pipe(text=text, audio=cases["text+array"]["audio"], max_new_tokens=1)
    for extra in ({"images": np.zeros((8, 8, 3), np.uint8)}, {"videos": [np.zeros((2, 8, 8, 3), np.uint8)]}):
        with pytest.raises(ValueError, match="PAL takes text and audio only"):
            pipe(**cases["text+array"], **extra, max_new_tokens=1)


def test_a_datasets_dataset_is_a_stream_of_prompts(checkpoint, cases, expected):
    """
    A `datasets.Dataset` of `{"text", "audio"}` rows (an Audio column; extra columns are ignored) gives each row's
    answer, as its row alone does; it was taken as one input (AttributeError: 'Dataset' object has no attribute 'copy').
    """
    import datasets

    pipe = pipeline("audio-text-to-text", model=checkpoint)
    case = cases["text+44.1kHz path"]
    rows = {"text": [case["text"]] * 3, "audio": [case["audio"]] * 3, "id": [0, 1, 2]}
    dataset = datasets.Dataset.from_dict(rows).cast_column("audio", datasets.Audio())
    for batch_size in (1, 2):
        outputs = list(pipe(dataset, max_new_tokens=NEW_TOKENS, return_tensors=True, batch_size=batch_size))
        assert len(outputs) == 3
        for output in outputs:
            assert torch.equal(output[0]["generated_token_ids"], expected["text+44.1kHz path"][0])
    assert pipe([], max_new_tokens=NEW_TOKENS) == []
    with pytest.raises(ValueError, match="The pipeline takes a prompt, a chat or a dict with 'text'.*got int"):
        pipe(5, max_new_tokens=NEW_TOKENS)


def test_any_to_any_serves_pal(checkpoint, cases, expected):
    pipe = pipeline("any-to-any", model=checkpoint)
    for name in ("text+array", "chat 44.1kHz path"):
        assert torch.equal(generated_ids(pipe, cases[name]), expected[name][0]), name


def test_pipeline_batches_and_saves(checkpoint, cases, expected, tmp_path):
    pipe = pipeline("audio-text-to-text", model=checkpoint)
    names = ("chat array", "chat 44.1kHz path")
    outputs = pipe(text=[cases[name]["text"] for name in names], max_new_tokens=NEW_TOKENS, return_tensors=True)
    for name, output in zip(names, outputs):
        assert torch.equal(output[0]["generated_token_ids"], expected[name][0]), name

    pipe.save_pretrained(tmp_path / "saved")
    reloaded = pipeline("audio-text-to-text", model=str(tmp_path / "saved"))
    assert torch.equal(generated_ids(reloaded, cases["text+44.1kHz path"]), expected["text+44.1kHz path"][0])


def test_batch_size_two_equals_one_by_one(checkpoint, cases):
    """Batches mix audio and text-only prompts, and clips of different lengths; left padding aside, each output is
    the one generated alone."""
    pipe = pipeline("audio-text-to-text", model=checkpoint)
    audio_token, pad_id = pipe.processor.audio_token, pipe.processor.tokenizer.pad_token_id
    long_clip = np.random.default_rng(1).standard_normal(16000 * 5).astype(np.float32) * 0.1  # 3 Whisper windows
    chats = [
        cases["chat array"]["text"],
        [{"role": "user", "content": "no audio here, what is two plus two?"}],
        cases["chat 44.1kHz path"]["text"],
        [{"role": "user", "content": [{"type": "audio", "audio": long_clip}, {"type": "text", "text": "and this?"}]}],
    ]
    prompts = [
        cases["text+44.1kHz path"],
        {"text": "a prompt without audio"},
        {"text": f"{audio_token} and {audio_token}?", "audio": [long_clip, cases["text+array"]["audio"]]},
    ]
    for inputs in (chats, prompts):
        alone = [out[0]["generated_token_ids"] for out in pipe(inputs, max_new_tokens=NEW_TOKENS, return_tensors=True)]
        assert_varied(torch.stack([ids[-NEW_TOKENS:] for ids in alone]), NEW_TOKENS, distinct=2)
        batched = pipe(inputs, max_new_tokens=NEW_TOKENS, return_tensors=True, batch_size=2)
        for single, out in zip(alone, batched, strict=True):
            ids = out[0]["generated_token_ids"]
            padding = len(ids) - len(single)
            assert torch.equal(ids[padding:], single) and (ids[:padding] == pad_id).all()
        texts = [
            [
                out[0]["generated_text"]
                for out in pipe(inputs, max_new_tokens=NEW_TOKENS, return_full_text=False, batch_size=size)
            ]
            for size in (1, 2)
        ]
        assert texts[0] == texts[1]
    # a generator (no length) is batched too; Transformers fails on generators of chats, even with batch_size=1
    streamed = pipe((prompt for prompt in prompts), max_new_tokens=NEW_TOKENS, return_tensors=True, batch_size=2)
    for out, streamed_out in zip(batched, streamed, strict=True):
        assert torch.equal(streamed_out[0]["generated_token_ids"], out[0]["generated_token_ids"])
    nested = {"text": [prompts[1]["text"]] * 2}  # an input that is itself a batch cannot share a batch
    with pytest.raises(ValueError, match="every input must be one prompt"):
        pipe([nested, prompts[1]], max_new_tokens=NEW_TOKENS, batch_size=2)


def test_batches_are_left_padded_whatever_the_tokenizers_side(checkpoint, cases):
    """
    Generation needs left padding: a tokenizer switched to right padding (for training, say) right-padded the
    pipeline's batches, and inputs that are themselves batches, and changed their answers.
    """
    pipe = pipeline("audio-text-to-text", model=checkpoint)
    prompts = [cases["text+array"], {"text": "a prompt without audio, and longer"}]
    alone = [out[0]["generated_text"] for out in pipe(prompts, max_new_tokens=NEW_TOKENS, return_full_text=False)]
    pipe.processor.tokenizer.padding_side = "right"
    batched = pipe(prompts, max_new_tokens=NEW_TOKENS, return_full_text=False, batch_size=2)
    assert [out[0]["generated_text"] for out in batched] == alone
    texts = [prompt["text"] for prompt in prompts]  # one input that is itself a batch
    as_one = pipe(text=texts, audio=[prompts[0]["audio"]], max_new_tokens=NEW_TOKENS, return_full_text=False)
    assert [out["generated_text"] for out in as_one] == alone


def test_any_to_any_audio_path_takes_the_first_extractors_rate(tiny_llm_dir, tiny_encoder_dir, tmp_path, monkeypatch):
    """
    docs/processing.md: "any-to-any" loads an `audio=` path at the first feature extractor's rate (CLAP's 48 kHz
    here), which the processor then takes at `processor.sampling_rate` unless that rate is passed as
    `processor_kwargs`; then every encoder gets the clip's length as from the processor itself.
    """
    shutil.copytree(tiny_encoder_dir("clap"), tmp_path / "clap48k")
    ClapFeatureExtractor(
        feature_size=16, sampling_rate=48000, hop_length=480, max_length_s=1, frequency_min=50, frequency_max=14000
    ).save_pretrained(tmp_path / "clap48k")
    encoders = {"clap": str(tmp_path / "clap48k"), "whisper": tiny_encoder_dir("whisper")}
    torch.manual_seed(0)
    model = PalForConditionalGeneration.from_components(tiny_llm_dir("llama"), encoders, lal_start_layer=2)
    processor = PalProcessor.from_components(tiny_llm_dir("llama"), encoders, model.config)
    model.save_pretrained(tmp_path / "pal")
    processor.save_pretrained(tmp_path / "pal")
    wav = str(tmp_path / "tone.wav")
    soundfile.write(wav, 0.3 * np.sin(2 * np.pi * 440 * np.arange(22050) / 44100), 44100)  # 0.5 s
    text = f"{processor.audio_token} what?"
    expected = [processor(text=text, audio=wav)[f"audio_feature_mask_{k}"].sum(-1) for k in (0, 1)]

    pipe = pipeline("any-to-any", model=str(tmp_path / "pal"))
    seen = {}
    generate = pipe.model.generate
    monkeypatch.setattr(pipe.model, "generate", lambda **inputs: seen.update(inputs) or generate(**inputs))
    for processor_kwargs, agrees in (({}, False), ({"sampling_rate": 48000}, True)):
        pipe(text=text, audio=wav, max_new_tokens=1, processor_kwargs=processor_kwargs)
        valid = [seen[f"audio_feature_mask_{k}"].sum(-1) for k in (0, 1)]
        assert all(map(torch.equal, valid, expected)) == agrees, processor_kwargs


REMOTE_PIPELINE = textwrap.dedent(
    """
    import importlib.abc, json, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "modeling_pal" or name.startswith("modeling_pal."):
                raise ImportError("modeling_pal is blocked in this process")
    sys.meta_path.insert(0, Block())
    try:
        import modeling_pal
        raise SystemExit("modeling_pal should not be importable here")
    except ImportError:
        pass
    import pickle
    from transformers import pipeline
    path, cases_path, new_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with open(cases_path, "rb") as file:
        cases = pickle.load(file)
    report = {}
    for task in (None, "any-to-any"):
        pipe = pipeline(task, model=path, trust_remote_code=True)
        for name, case in cases.items() if task is None else [("chat 44.1kHz path", cases["chat 44.1kHz path"])]:
            out = pipe(**case, max_new_tokens=new_tokens, return_tensors=True)
            report[f"{task}/{name}"] = [type(pipe).__name__, out[0]["generated_token_ids"].tolist()]
    assert "modeling_pal" not in sys.modules
    print(json.dumps(report))
    """
)


def test_trust_remote_code_pipeline_without_package(checkpoint, cases, expected, tmp_path):
    (tmp_path / "cases.pkl").write_bytes(pickle.dumps(cases))
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_PIPELINE, checkpoint, str(tmp_path / "cases.pkl"), str(NEW_TOKENS)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HF_HOME": str(tmp_path / "hf")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(report) == 5
    for key, (pipeline_class, ids) in report.items():
        task, name = key.split("/")
        assert pipeline_class == ("AudioTextToTextPipeline" if task == "None" else "AnyToAnyPipeline")
        assert ids == expected[name][0].tolist(), key
