"""The evaluation script end to end on a tiny PAL and a tiny PAL-Synth: per-task metrics, table, MMAU export."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from modeling_pal.data.synth import build_pal_synth
from modeling_pal.evaluation import MMAU_FIELDS, validate_mmau_records
from modeling_pal.evaluation.runner import CHOICE_TASKS, markdown_table, prompt_messages, score_predictions

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    build_pal_synth(size=30, seed=0).save_to_disk(str(out))
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


def evaluate_command(checkpoint: Path, dataset_dir: Path, *args: str) -> list[str]:
    script = [sys.executable, str(REPO / "examples" / "evaluate_pal.py")]
    return script + ["--model", str(checkpoint), "--dataset", str(dataset_dir), *args]


def test_evaluate_script_writes_a_report_and_mmau_export_per_split(dataset_dir, checkpoint, tmp_path):
    splits = ["test", "test_compositional"]
    command = evaluate_command(
        checkpoint,
        dataset_dir,
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

    dataset = load_from_disk(str(dataset_dir))
    for split in splits:
        report = json.loads((tmp_path / f"report-{split}.json").read_text())
        assert report["split"] == split and report["metrics"]
        assert [row["id"] for row in report["predictions"]] == dataset[split]["id"][:4]
        records = json.loads((tmp_path / f"mmau-{split}.json").read_text())
        validate_mmau_records(records)
        assert all(set(MMAU_FIELDS) <= set(record) and "audio" not in record for record in records)


def test_evaluate_script_needs_a_split_placeholder_for_several_splits(dataset_dir, checkpoint, tmp_path):
    command = evaluate_command(checkpoint, dataset_dir, "--split", "test", "validation", "--output", "r.json")
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and "must contain {split}" in result.stderr
