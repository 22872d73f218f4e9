"""The evaluation script end to end on a tiny PAL and a tiny PAL-Synth: per-task metrics, table, MMAU export."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
from helpers import sharpened

from modeling_pal import PalForConditionalGeneration, PalProcessor
from modeling_pal.data.converters import convert_clotho
from modeling_pal.data.synth import build_pal_synth
from modeling_pal.evaluation import MMAU_FIELDS, load_metric, runner, validate_mmau_records
from modeling_pal.evaluation.runner import (
    CHOICE_TASKS,
    generate_answers,
    markdown_table,
    prompt_messages,
    reference_groups,
    score_predictions,
)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    build_pal_synth(size=30, seed=0).save_to_disk(str(out))
    return out


@pytest.fixture(scope="module")
def mmau_dataset_dir(dataset_dir, tmp_path_factory) -> Path:
    """PAL-Synth's test splits with MMAU's task and difficulty on their multiple-choice rows."""
    from datasets import load_from_disk

    def as_mmau(row: dict) -> dict:
        return {"task": "sound", "difficulty": "easy"} if row["choices"] else {"difficulty": ""}

    out = tmp_path_factory.mktemp("mmau")
    dataset = load_from_disk(str(dataset_dir))
    dataset = type(dataset)({split: dataset[split].map(as_mmau) for split in ("test", "test_compositional")})
    dataset.save_to_disk(str(out))
    return out


@pytest.fixture(scope="module")
def checkpoint(saved_pal_checkpoint) -> Path:
    return Path(saved_pal_checkpoint("lal"))


def test_prompt_messages_fill_the_rows_audio_and_drop_the_answer(dataset_dir):
    from datasets import load_from_disk

    row = load_from_disk(str(dataset_dir))["test"][0]
    prompt = prompt_messages(row)
    assert [message["role"] for message in prompt] == ["user"]
    audio_items = [item for item in prompt[0]["content"] if item["type"] == "audio"]
    assert len(audio_items) == 1 and audio_items[0]["audio"].ndim == 1


def test_a_chat_without_an_answer_turn_is_the_prompt_as_a_whole(dataset_dir):
    """Rows whose answer is only in the `answer` column failed with "max() arg is an empty sequence"."""
    from datasets import load_from_disk

    row = load_from_disk(str(dataset_dir))["test"][0]
    question_only = {**row, "task": "captioning", "messages": row["messages"][:-1]}
    prompt = prompt_messages(question_only)
    assert [message["content"][-1]["text"] for message in prompt] == [row["messages"][0]["content"][-1]["text"]]
    from_file = {**question_only, "audio": "clip.wav"}
    assert reference_groups([from_file, from_file]) == [[0, 1]]  # one clip, one question: one generation


def test_scores_reference_answers_perfectly(dataset_dir):
    from datasets import load_from_disk

    rows = load_from_disk(str(dataset_dir))["test"]
    results = score_predictions(rows, [row["answer"] for row in rows])
    for task, metrics in results.items():
        if task in CHOICE_TASKS:
            assert metrics["accuracy"] == 1.0
            assert metrics["chance"] is None if task == "counting" else 0 < metrics["chance"] < 1
        if task == "transcription":
            assert metrics["wer"] == 0.0
    assert "| task | n | metric | value | chance |" in markdown_table(results)


CLOTHO_CAPTIONS = {
    "dog.wav": ["a dog barks loudly", "a dog is barking", "barking of a dog"],
    "rain.wav": ["rain falls on a roof", "heavy rain on a roof", "rain is falling"],
}


def test_caption_rows_of_one_clip_share_a_generation_and_all_references(checkpoint, tmp_path):
    rng = np.random.default_rng(0)
    rows = ["file_name,caption_1,caption_2,caption_3"]
    for name, captions in CLOTHO_CAPTIONS.items():
        soundfile.write(tmp_path / name, rng.standard_normal(16000).astype(np.float32) * 0.1, 16000)
        rows.append(",".join([name, *captions]))
    (tmp_path / "captions.csv").write_text("\n".join(rows) + "\n")
    dataset = convert_clotho(tmp_path / "captions.csv", tmp_path)  # one row per caption
    model, processor = (
        PalForConditionalGeneration.from_pretrained(checkpoint),
        PalProcessor.from_pretrained(checkpoint),
    )
    model.generation_config.num_beams = 3  # a checkpoint's own setting: evaluation stays greedy
    generated = []
    generate = model.generate
    model.generate = lambda **inputs: generated.append(inputs) or generate(**inputs)
    answers = generate_answers(model, processor, dataset, max_new_tokens=2)
    assert sum(len(inputs["input_ids"]) for inputs in generated) == 2
    assert all(inputs["num_beams"] == 1 and not inputs["do_sample"] for inputs in generated)
    assert answers[:3] == [answers[0]] * 3 and answers[3:] == [answers[3]] * 3

    predictions = ["a dog is barking"] * 3 + ["rain is falling"] * 3
    results = score_predictions(dataset, predictions)["captioning"]
    expected = load_metric("caption_metrics").compute(
        predictions=["a dog is barking", "rain is falling"], references=list(CLOTHO_CAPTIONS.values())
    )
    assert results == {"count": 2, **expected}


def test_scoring_needs_one_prediction_per_row():
    messages = [{"role": "user", "content": "Is anyone speaking?"}, {"role": "assistant", "content": "yes"}]
    rows = [{"task": "speech_detection", "answer": "yes", "choices": ["yes", "no"], "messages": messages}] * 2
    for predictions in (["yes"], ["yes", "yes", "no"]):  # an IndexError; extra predictions were ignored
        with pytest.raises(ValueError, match=f"2 rows but {len(predictions)} predictions"):
            score_predictions(rows, predictions)


def test_scoring_refuses_a_task_it_has_no_metric_for():
    """An unknown task (here a typo of "transcription") was scored as exact-match accuracy without a word."""
    messages = [{"role": "user", "content": "Transcribe."}, {"role": "assistant", "content": "hello world"}]
    rows = [{"task": "transcripton", "answer": "hello world", "choices": [], "messages": messages}]
    with pytest.raises(
        ValueError, match=r"No metric for task\(s\) \['transcripton'\] without choices.*'transcription'"
    ):
        score_predictions(rows, ["hello world."])
    mmau_row = {**rows[0], "task": "sound", "answer": "Dog", "choices": ["Cat", "Dog"]}  # any name: multiple choice
    assert score_predictions([mmau_row], ["It is a dog."])["sound"] == {
        "count": 1,
        "accuracy": 1.0,
        "chance": 0.5,
        "unparsed": 0,
    }


def test_saved_clips_that_share_a_file_name_are_not_grouped(tmp_path):
    """`save_to_disk` keeps the base name of an embedded clip's path: rain/0001.wav and dog/0001.wav became one."""
    from datasets import Audio, Dataset, load_from_disk

    rng = np.random.default_rng(0)
    paths = [tmp_path / folder / "0001.wav" for folder in ("rain", "dog")]
    for path in paths:
        path.parent.mkdir()
        soundfile.write(path, rng.standard_normal(1600).astype(np.float32) * 0.1, 16000)
    messages = [
        {
            "role": "user",
            "content": [{"type": "audio", "text": None}, {"type": "text", "text": "Describe the sound."}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "a sound"}]},
    ]
    columns = {"audio": [str(path) for path in paths], "task": ["captioning"] * 2, "messages": [messages] * 2}
    Dataset.from_dict(columns).cast_column("audio", Audio()).save_to_disk(str(tmp_path / "saved"))
    assert reference_groups(load_from_disk(str(tmp_path / "saved"))) == [[0], [1]]


def test_only_rows_with_the_same_prompt_share_a_generation():
    def row(history: str, audio: str = "a.wav") -> dict:
        messages = [
            {"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": history}]},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": "What happens next?"}]},
            {"role": "assistant", "content": "a dog barks"},
        ]
        return {"task": "open_qa", "question": "What happens next?", "audio": audio, "messages": messages}

    rows = [row("Listen."), row("Count the beeps."), row("Listen."), row("Listen.", "b.wav")]
    assert reference_groups(rows) == [[0, 2], [1], [3]]  # same clip and question, other earlier turn: not shared
    decoded = [{**rows[0], "audio": np.zeros(160, dtype=np.float32)}] * 2
    assert reference_groups(decoded) == [[0], [1]]


@pytest.fixture(scope="module")
def evaluate_script():
    spec = importlib.util.spec_from_file_location("evaluate_pal", REPO / "examples" / "evaluate_pal.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_a_split_reads_its_clips_once_to_group_them(evaluate_script, dataset_dir, checkpoint, monkeypatch):
    """Grouping reads every clip's path or bytes: generation and scoring share one pass."""
    from datasets import load_from_disk

    passes = []
    clip_identities = runner._clip_identities
    monkeypatch.setattr(runner, "_clip_identities", lambda rows: passes.append(len(rows)) or clip_identities(rows))
    rows = load_from_disk(str(dataset_dir))["test"]
    rows = rows.select([i for i, task in enumerate(rows["task"]) if task in CHOICE_TASKS][:4])  # no Java to start
    model, processor = (
        PalForConditionalGeneration.from_pretrained(checkpoint),
        PalProcessor.from_pretrained(checkpoint),
    )
    metrics, predictions = evaluate_script.evaluate_split(model, processor, rows, batch_size=4, max_new_tokens=2)
    assert passes == [4] and len(predictions) == 4 and metrics


def test_evaluate_script_help_shows_its_example_commands_as_written(evaluate_script, capsys):
    with pytest.raises(SystemExit):
        evaluate_script.parse_args(["--help"])
    assert "--dataset outputs/demo/pal_synth \\\n    --split test --output r.json" in capsys.readouterr().out


def test_evaluate_script_refuses_a_folder_as_output_before_generating(evaluate_script, dataset_dir, capsys, tmp_path):
    (tmp_path / "mmau-test").mkdir()
    base = ["--model", str(dataset_dir), "--dataset", str(dataset_dir), "--split"]
    for options in (
        ["test", "--output", str(tmp_path)],
        ["test", "validation", "--output", "{split}.json", "--mmau-output", str(tmp_path / "mmau-{split}")],
    ):
        with pytest.raises(SystemExit):  # an IsADirectoryError once the split had been generated, its answers lost
            evaluate_script.parse_args([*base, *options])
        assert "is a folder: give a file name" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--dataset", "runs/no-such-data"], "no such folder: runs/no-such-data"),
        (["--limit", "0"], "--limit: expected an integer ≥ 1, got '0'"),  # evaluated every row
        (["--batch-size", "0"], "--batch-size: expected an integer ≥ 1, got '0'"),  # range() arg 3 must not be zero
        (["--max-new-tokens", "-1"], "--max-new-tokens: expected an integer ≥ 1, got '-1'"),
    ],
)
def test_evaluate_script_rejects_bad_options_by_name(option, message, evaluate_script, dataset_dir, capsys):
    argv = ["--model", str(dataset_dir), "--dataset", str(dataset_dir), "--output", "r.json", *option]
    with pytest.raises(SystemExit):
        evaluate_script.parse_args(argv)
    assert message in capsys.readouterr().err


def evaluate_command(checkpoint: Path, dataset_dir: Path, *args: str) -> list[str]:
    script = [sys.executable, str(REPO / "examples" / "evaluate_pal.py")]
    return script + ["--model", str(checkpoint), "--dataset", str(dataset_dir), *args]


def test_evaluate_script_writes_a_report_and_mmau_export_per_split(mmau_dataset_dir, checkpoint, tmp_path):
    splits = ["test", "test_compositional"]
    command = evaluate_command(
        checkpoint,
        mmau_dataset_dir,
        "--split",
        *splits,
        "--output",
        str(tmp_path / "report-{split}.json"),
        "--mmau-output",
        str(tmp_path / "mmau-{split}.json"),
        "--limit",
        "4",
        "--max-new-tokens",
        "4",
    )
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("| task | n | metric |") == 2
    from datasets import load_from_disk

    dataset = load_from_disk(str(mmau_dataset_dir))
    for split in splits:
        report = json.loads((tmp_path / f"report-{split}.json").read_text())
        assert report["split"] == split and report["metrics"] and report["limit"] == 4
        assert report["generation"] == {"do_sample": False, "num_beams": 1, "max_new_tokens": 4, "batch_size": 16}
        assert [row["id"] for row in report["predictions"]] == dataset[split]["id"][:4]
        records = json.loads((tmp_path / f"mmau-{split}.json").read_text())
        validate_mmau_records(records)
        assert records and all(set(MMAU_FIELDS) <= set(record) and "audio" not in record for record in records)


def test_mmau_export_of_rows_mmau_cannot_score_fails_before_the_model_loads(evaluate_script, dataset_dir, tmp_path):
    """PAL-Synth's rows have PAL's tasks and no difficulty: MMAU's evaluation.py raised a KeyError on the export."""
    (tmp_path / "empty").mkdir()  # no model in it: only the MMAU check can stop the script before loading
    argv = ["--model", str(tmp_path / "empty"), "--dataset", str(dataset_dir), "--output", str(tmp_path / "r.json")]
    with pytest.raises(SystemExit, match="--mmau-output: split 'test': MMAU record 0 .* has no field 'difficulty'"):
        evaluate_script.main([*argv, "--mmau-output", str(tmp_path / "mmau.json")])
    assert not list(tmp_path.glob("*.json"))


def test_evaluate_script_needs_a_split_placeholder_for_several_splits(dataset_dir, checkpoint, tmp_path):
    command = evaluate_command(checkpoint, dataset_dir, "--split", "test", "validation", "--output", "r.json")
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and "must contain {split}" in result.stderr


def test_evaluate_script_checks_the_splits_before_loading_the_model(dataset_dir, tmp_path):
    (tmp_path / "empty").mkdir()  # no model in it: only the split check can stop the script before loading
    command = evaluate_command(
        tmp_path / "empty", dataset_dir, "--split", "test", "nosuch", "--output", "{split}.json"
    )
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 1 and "no split 'nosuch'" in result.stderr
    assert "available: test, test_compositional, train, validation" in result.stderr
    missing = evaluate_command(tmp_path / "runs" / "stage3", dataset_dir, "--split", "test", "--output", "r.json")
    result = subprocess.run(missing, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and "no such checkpoint folder" in result.stderr


def test_batched_answers_equal_one_by_one_whatever_the_tokenizers_padding_side(dataset_dir, checkpoint):
    from datasets import load_from_disk

    rows = load_from_disk(str(dataset_dir))["test"]
    rows = rows.select([i for i, task in enumerate(rows["task"]) if task != "captioning"][:4])  # prompts of 4 lengths
    model = sharpened(PalForConditionalGeneration.from_pretrained(checkpoint))
    processor = PalProcessor.from_pretrained(checkpoint)
    processor.tokenizer.padding_side = "right"  # as set for training
    one_by_one = generate_answers(model, processor, rows, batch_size=1, max_new_tokens=6)
    assert len(set(one_by_one)) > 1, one_by_one
    assert generate_answers(model, processor, rows, batch_size=4, max_new_tokens=6) == one_by_one


def test_documented_mmau_exports_are_of_mmau_rows():
    """The script refuses `--mmau-output` for PAL-Synth (its rows have PAL's tasks): no documented command asks it."""
    text = (REPO / "docs" / "evaluation.md").read_text().replace("\\\n", " ")
    commands = [line.split() for line in text.splitlines() if "evaluate_pal.py" in line and "--dataset" in line]
    assert commands
    for words in commands:
        if "--mmau-output" in words:
            assert "pal_synth" not in words[words.index("--dataset") + 1], " ".join(words)
