"""Tests for the metric modules (loaded offline through `evaluate.load`), answer parsing and the MMAU export."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pycocoevalcap.spice
import pytest
import sacrebleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from modeling_pal.evaluation import (
    METRIC_NAMES,
    METRICS_DIR,
    MMAU_FIELDS,
    load_metric,
    normalize_text,
    parse_choice,
    to_mmau_records,
    validate_mmau_records,
    write_mmau_json,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SPICE_JARS = [
    Path(pycocoevalcap.spice.__file__).parent / "lib" / name
    for name in ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
]

# Each prediction equals one of its references up to case and punctuation, so ROUGE-L and METEOR (best reference)
# are exactly 1.0, while CIDEr-D (consensus over all references) stays below its maximum.
CAPTION_PREDICTIONS = ["A dog barks loudly.", "Rain falls on a tin roof", "a car passes by"]
CAPTION_REFERENCES = [
    ["a dog barks loudly", "a dog is barking in the distance"],
    ["heavy rain is falling", "rain falls on a tin roof."],
    ["A car passes by!", "a vehicle drives past on a wet road"],
]
BLEU_PREDICTIONS = ["the cat sat on the mat", "a quick brown fox jumps over the dog"]
BLEU_REFERENCES = [
    ["the cat is sitting on the mat", "a cat sat on the mat"],
    ["the quick brown fox jumps over the lazy dog", "a fast brown fox leaps over the dog"],
]

METRIC_CASES = {
    "accuracy": [
        {"predictions": [0, 1, 1, 0], "references": [0, 1, 0, 0]},
        {"predictions": ["Man", "Woman"], "references": ["Man", "Child"]},
        # parsed answers of a mixed batch: the first looks like an integer, the rest do not
        {"predictions": ["3", "yes", "no"], "references": ["3", "no", "no"]},
    ],
    "mean_average_precision": [
        {
            "predictions": [[0.9, 0.1], [0.2, 0.8], [0.4, 0.7], [0.6, 0.5]],
            "references": [[1, 0], [0, 1], [1, 1], [0, 0]],
        }
    ],
    "wer": [
        {"predictions": ["Hello, World!"], "references": ["hello world"]},
        {"predictions": ["Hello, World!", "the cat sat"], "references": ["hello world", "the cat sat on the mat"]},
        {
            "predictions": ["Hello, World!", "the cat sat"],
            "references": ["hello world", "the cat sat on the mat"],
            "normalize": False,
        },
        {"predictions": ["Hello, World!"], "references": ["hello word"]},
        {"predictions": ["Hello, World!"], "references": ["hello word"], "normalize": False},
    ],
    "bleu": [
        {"predictions": ["the cat sat on the mat"], "references": ["the cat sat on the mat"]},
        {"predictions": BLEU_PREDICTIONS, "references": BLEU_REFERENCES},
        {"predictions": BLEU_PREDICTIONS, "references": [BLEU_REFERENCES[0], BLEU_REFERENCES[1][:1]]},
    ],
    "caption_metrics": [{"predictions": CAPTION_PREDICTIONS, "references": CAPTION_REFERENCES}],
}

# Runs in a fresh interpreter so that `evaluate` reads the temporary HF_HOME when it is first imported.
_RUNNER = """
import json
import sys

from modeling_pal.evaluation import load_metric

cases = json.loads(sys.argv[1])
results = {}
for name, kwargs_list in cases.items():
    metric = load_metric(name)
    results[name] = []
    for kwargs in kwargs_list:
        try:
            results[name].append(metric.compute(**kwargs))
        except ValueError as error:
            results[name].append({"error": str(error)})
with open(sys.argv[2], "w") as file:
    json.dump(results, file)
"""


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hf_home")


@pytest.fixture(scope="module")
def metric_results(hf_home, tmp_path_factory) -> dict:
    """Loads every metric with `evaluate.load` offline in a subprocess and computes `METRIC_CASES`."""
    output = tmp_path_factory.mktemp("metric_results") / "results.json"
    env = {
        **os.environ,
        "HF_HOME": str(hf_home),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    command = [sys.executable, "-c", _RUNNER, json.dumps(METRIC_CASES), str(output)]
    process = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr
    return json.loads(output.read_text())


@pytest.fixture(scope="module")
def direct_caption_scores() -> dict[str, float]:
    """CIDEr-D, ROUGE-L and METEOR of the caption case computed by calling pycocoevalcap directly."""
    tokenizer = PTBTokenizer()
    gold = tokenizer.tokenize({i: [{"caption": text} for text in texts] for i, texts in enumerate(CAPTION_REFERENCES)})
    candidates = tokenizer.tokenize({i: [{"caption": text}] for i, text in enumerate(CAPTION_PREDICTIONS)})
    return {
        "cider_d": Cider().compute_score(gold, candidates)[0],
        "rouge_l": Rouge().compute_score(gold, candidates)[0],
        "meteor": Meteor().compute_score(gold, candidates)[0],
    }


def test_metric_names_match_the_shipped_modules():
    shipped = sorted(path.name for path in METRICS_DIR.iterdir() if (path / f"{path.name}.py").is_file())
    assert sorted(METRIC_NAMES) == shipped


def test_load_metric_rejects_unknown_names():
    with pytest.raises(ValueError, match="'rouge'"):
        load_metric("rouge")


def test_modules_are_loaded_through_evaluate_into_hf_home(metric_results, hf_home):
    assert set(metric_results) == set(METRIC_NAMES)
    loaded = {path.name for path in (hf_home / "modules" / "evaluate_modules" / "metrics").iterdir()}
    assert set(METRIC_NAMES) <= loaded


def test_accuracy(metric_results):
    assert metric_results["accuracy"] == [{"accuracy": 0.75}, {"accuracy": 0.5}, {"accuracy": pytest.approx(2 / 3)}]


def test_mean_average_precision(metric_results):
    # Class 0 ranks its positives 1st and 3rd: AP = (1/1 + 2/3) / 2 = 5/6. Class 1 ranks them 1st and 2nd: AP = 1.
    [result] = metric_results["mean_average_precision"]
    assert result["mean_average_precision"] == pytest.approx((5 / 6 + 1) / 2)


def test_wer_normalizes_like_whisper(metric_results):
    identical, with_deletions, raw, _, _ = metric_results["wer"]
    assert identical["wer"] == 0.0
    # 3 deleted words out of 2 + 6 reference words; without normalisation "Hello," and "World!" are 2 substitutions.
    assert with_deletions["wer"] == pytest.approx(3 / 8)
    assert raw["wer"] == pytest.approx(5 / 8)


def test_cer(metric_results):
    *_, normalized, raw = metric_results["wer"]
    # "hello world" vs "hello word": 1 inserted character over 10 reference characters.
    assert normalized["cer"] == pytest.approx(0.1)
    # "Hello, World!": H and W substituted, ",", "l" and "!" inserted.
    assert raw["cer"] == pytest.approx(0.5)


def test_bleu(metric_results):
    identical, multi_reference, uneven = metric_results["bleu"]
    assert identical["bleu"] == pytest.approx(100.0)
    expected = sacrebleu.corpus_bleu(BLEU_PREDICTIONS, [list(stream) for stream in zip(*BLEU_REFERENCES)])
    assert multi_reference["bleu"] == pytest.approx(expected.score)
    assert multi_reference["precisions"] == pytest.approx(expected.precisions)
    assert 0 < multi_reference["bleu"] < 100
    assert "same number of references" in uneven["error"]


def test_caption_metrics_match_pycocoevalcap(metric_results, direct_caption_scores):
    [result] = metric_results["caption_metrics"]
    assert result["rouge_l"] == pytest.approx(1.0)
    assert result["meteor"] == pytest.approx(1.0)
    assert 0 < result["cider_d"] < 10
    for name, expected in direct_caption_scores.items():
        assert result[name] == pytest.approx(expected), name


def test_spice_is_unavailable_without_corenlp_and_nothing_is_downloaded(metric_results):
    [result] = metric_results["caption_metrics"]
    if all(path.is_file() for path in SPICE_JARS):
        assert result["spider"] == pytest.approx((result["cider_d"] + result["spice"]) / 2)
    else:
        assert result["spice"] == "unavailable"
        assert result["spider"] == "unavailable"
        assert not any(path.exists() for path in SPICE_JARS)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("  The (B) Piano!", "the b piano"), ("Rock-'n'-Roll\n", "rock n roll"), ("Café_au_lait", "café au lait")],
)
def test_normalize_text(text, expected):
    assert normalize_text(text) == expected


@pytest.mark.parametrize(
    ("generated_text", "choices", "expected"),
    [
        ("Woman", ["Man", "Woman"], "Woman"),
        ("man", ["Man", "man"], "man"),
        ("WOMAN", ["Man", "Woman"], "Woman"),
        (" woman. ", ["Man", "Woman"], "Woman"),
        ("The speaker is a woman.", ["Man", "Woman", "Child"], "Woman"),
        ("It sounds like a fire truck siren.", ["Fire", "Fire truck", "Radio"], "Fire truck"),
        ("(B) acoustic guitar", ["Electric guitar", "Acoustic guitar"], "Acoustic guitar"),
        ("Either a dog or a cat.", ["Cat", "Dog"], "Dog"),
        ("I cannot tell.", ["Cat", "Dog"], None),
        ("(B)", ["Cat", "Dog"], "Dog"),
        ("B.", ["Cat", "Dog"], "Dog"),
        ("Answer: a", ["Cat", "Dog"], "Cat"),
        ("The answer is option B.", ["Cat", "Dog"], "Dog"),
        ("(C)", ["Cat", "Dog"], None),
        ("A dog.", ["Cat", "Dog"], "Dog"),
        ("b", ["A", "B"], "B"),
        ("A category of sounds", ["Cat", "?"], None),
    ],
)
def test_parse_choice(generated_text, choices, expected):
    assert parse_choice(generated_text, choices) == expected


def _mmau_rows() -> list[dict]:
    return [
        {
            "id": "q1",
            "audio_id": "./test-mini-audios/q1.wav",
            "question": "Identify the source of the speaking voice.",
            "choices": ["Man", "Woman", "Child", "Robot"],
            "answer": "Man",
            "task": "sound",
            "difficulty": "medium",
            "audio": {"array": [0.0], "sampling_rate": 16000},
        },
        {
            "id": "q2",
            "question": "Which instrument plays the melody?",
            "choices": ["Piano", "Violin"],
            "answer": "Violin",
            "task": "music",
            "difficulty": "easy",
        },
        {
            "id": "q3",
            "question": "How many speakers are there?",
            "choices": ["One", "Two"],
            "answer": "Two",
            "task": "speech",
            "difficulty": "hard",
        },
    ]


def test_mmau_export_round_trip(tmp_path):
    predictions = ["It is a man.", "A violin.", "There are two speakers."]
    records = to_mmau_records(_mmau_rows(), predictions)
    path = write_mmau_json(tmp_path / "mmau.json", records)
    loaded = json.loads(path.read_text(encoding="utf-8"))
    assert loaded == records
    assert [record["model_prediction"] for record in loaded] == predictions
    assert all(set(MMAU_FIELDS) <= set(record) for record in loaded)
    assert loaded[0]["task"] == "sound" and loaded[0]["difficulty"] == "medium"
    assert "audio" not in loaded[0]
    validate_mmau_records(loaded)


def _remove(field):
    def edit(record):
        del record[field]

    return edit


def _set(field, value):
    def edit(record):
        record[field] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_remove("question"), r"record 1 \(id='q2'\) has no field 'question'"),
        (_remove("model_prediction"), r"record 1 \(id='q2'\) has no field 'model_prediction'"),
        (_set("id", 2), r"record 1 \(id=2\): field 'id' must be a string"),
        (_set("choices", "Piano, Violin"), r"record 1 \(id='q2'\): field 'choices' must be a non-empty list"),
        (_set("choices", []), r"field 'choices' must be a non-empty list"),
        (_set("choices", ["Piano", 3]), r"field 'choices' must be a non-empty list of strings"),
        (_set("answer", ["Violin"]), r"field 'answer' must be a string"),
        (_set("model_prediction", None), r"field 'model_prediction' must be a string, got None"),
        (_set("answer", "Cello"), r"record 1 \(id='q2'\): field 'answer' 'Cello' is not among its choices"),
        # MMAU's evaluation.py counts accuracy per task and difficulty, in tables of MMAU's values only
        (_remove("difficulty"), r"record 1 \(id='q2'\) has no field 'difficulty'"),
        (_set("task", "classification"), r"field 'task' 'classification' is not one of MMAU's \['sound', 'music'"),
        (_set("difficulty", "Easy"), r"field 'difficulty' 'Easy' is not one of MMAU's \['easy', 'medium', 'hard'\]"),
    ],
)
def test_mmau_validation_names_the_bad_record_and_field(edit, message, tmp_path):
    records = to_mmau_records(_mmau_rows(), ["Man", "Violin", "Two"])
    edit(records[1])
    with pytest.raises(ValueError, match=message):
        validate_mmau_records(records)
    with pytest.raises(ValueError, match=message):
        write_mmau_json(tmp_path / "mmau.json", records)
    assert not (tmp_path / "mmau.json").exists()


def test_mmau_rejects_bad_containers_and_counts():
    with pytest.raises(ValueError, match="must be a list"):
        validate_mmau_records({"id": "q1"})
    with pytest.raises(ValueError, match="record 0 must be a dict"):
        validate_mmau_records(["q1"])
    with pytest.raises(ValueError, match="3 MMAU rows but 2 predictions"):
        to_mmau_records(_mmau_rows(), ["Man", "Violin"])
    with pytest.raises(ValueError, match="'answer' 'Cat' is not among"):
        to_mmau_records([{**_mmau_rows()[2], "answer": "Cat"}], ["Two"])
