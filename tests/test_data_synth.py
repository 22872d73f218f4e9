"""PAL-Synth: determinism, held-out event combinations, the row schema, audio and curriculum stage subsets."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import importlib.util
import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset, DatasetDict, load_from_disk

from modeling_pal.data.synth import (
    DEFAULT_SIZE,
    HELD_OUT_PAIRS,
    MIX_EVENTS,
    PAL_FEATURES,
    PAL_SYNTH_VERSION,
    SPLITS,
    TASK_TYPES,
    TRAIN_PAIRS,
    _plan_split,
    build_pal_synth,
    main,
    pal_synth_version,
    stage_subset,
)

TINY_SIZE = 45  # 45 train, 4 validation, 9 test and 3 compositional rows; every task occurs in train


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pal_synth")
    main(["--out", str(out), "--size", str(TINY_SIZE), "--seed", "0"])
    return out


@pytest.fixture(scope="module")
def dataset(saved) -> DatasetDict:
    return load_from_disk(str(saved))


def _arrow_files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*.arrow"))}


def _pairs(events: list[str]) -> set[tuple[str, str]]:
    return {tuple(sorted(pair)) for pair in itertools.combinations(set(events), 2)}


def test_same_seed_gives_byte_identical_files(saved, tmp_path):
    main(["--out", str(tmp_path), "--size", str(TINY_SIZE), "--seed", "0"])
    first, second = _arrow_files(saved), _arrow_files(tmp_path)
    assert sorted(first) == sorted(second) and len(first) == len(SPLITS)
    for name in first:
        assert first[name] == second[name], name


def test_different_seed_differs(dataset):
    other = build_pal_synth(TINY_SIZE, seed=1)
    for split in SPLITS:
        audio, other_audio = (data[split].data.column("audio").to_pylist() for data in (dataset, other))
        assert len(audio) == len(other_audio) and all(a["bytes"] != b["bytes"] for a, b in zip(audio, other_audio))


def test_splits_and_sizes(dataset):
    assert list(dataset) == list(SPLITS)
    assert [len(dataset[split]) for split in SPLITS] == [45, 4, 9, 3]
    assert set(dataset["train"]["task"]) == set(TASK_TYPES)
    with pytest.raises(ValueError, match="size"):
        build_pal_synth(0)


def test_compositional_split_shares_no_event_pair_with_other_splits(dataset):
    seen = set().union(*(_pairs(events) for split in SPLITS[:3] for events in dataset[split]["events"]))
    for events in dataset["test_compositional"]["events"]:
        assert len(set(events)) == 2 and not _pairs(events) & seen


def test_held_out_pairs_at_default_size():
    assert not set(HELD_OUT_PAIRS) & set(TRAIN_PAIRS)
    assert set(itertools.chain(*TRAIN_PAIRS)) == set(MIX_EVENTS)  # each event is seen in train, in other pairs
    train = set().union(*(_pairs([e.name for e in row.clip.events]) for row in _plan_split("train", DEFAULT_SIZE, 0)))
    compositional = [_pairs([e.name for e in row.clip.events]) for row in _plan_split("test_compositional", 200, 0)]
    assert all(len(pairs) == 1 and not pairs & train for pairs in compositional)
    assert len(set().union(*compositional)) > 10


def test_default_test_split_has_balanced_classification_rows():
    rows = [row for row in _plan_split("test", DEFAULT_SIZE // 5, 0) if row.task == "classification"]
    counts = Counter(row.label for row in rows)
    assert len(rows) >= 200 and len(counts) >= 4 and len(set(counts.values())) == 1


def test_rows_follow_the_schema(dataset):
    ids = set()
    for split in SPLITS:
        assert dataset[split].features == PAL_FEATURES
        for row in dataset[split].remove_columns("audio"):
            assert row["id"].startswith(f"{split}-") and row["id"] not in ids
            ids.add(row["id"])
            assert row["task_type"] == TASK_TYPES[row["task"]]
            user, assistant = row["messages"]
            assert user["role"] == "user" and assistant["role"] == "assistant"
            assert [item for item in user["content"] if item["type"] == "audio"] == [{"type": "audio", "text": None}]
            assert [item["text"] for item in user["content"] if item["type"] == "text"] == [row["question"]]
            assert assistant["content"] == [{"type": "text", "text": row["answer"]}]
            assert row["answer"] and row["question"] and row["caption"] and row["events"]
            assert not row["choices"] or row["answer"] in row["choices"]
            if row["task_type"] == "classification":
                assert row["label"] == row["answer"] and len(row["choices"]) >= 4
                assert all(choice in row["question"] for choice in row["choices"])
            else:
                assert row["label"] == ""
            assert bool(row["transcript"]) == bool(row["language"]) == ("speech" in row["events"])
            assert 1.0 <= row["duration"] <= 10.0


def test_audio_is_16khz_finite_and_non_empty(dataset):
    for split in SPLITS:
        for row in dataset[split]:
            decoded = row["audio"].get_all_samples()
            samples = decoded.data.numpy()
            assert decoded.sample_rate == 16000 and samples.shape[0] == 1
            assert samples.size > 0 and np.isfinite(samples).all() and np.abs(samples).max() > 0
            assert samples.shape[1] == pytest.approx(row["duration"] * 16000, abs=1)


def test_a_saved_pal_synth_knows_its_version(dataset):
    """Caches of PAL-Synth (the demo's, the reproduction study's) tell a build of another generator version apart."""
    assert pal_synth_version(dataset) == PAL_SYNTH_VERSION
    assert pal_synth_version(stage_subset(dataset["train"], 2)) == PAL_SYNTH_VERSION
    assert pal_synth_version(Dataset.from_dict({"id": ["a"]})) is None  # built before versions, or other data


def test_the_demo_refuses_a_cached_pal_synth_of_another_version(dataset, tmp_path):
    spec = importlib.util.spec_from_file_location("demo", Path(__file__).parent.parent / "examples" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    for split in dataset.values():
        split.info.version = None  # as saved before versions were recorded
    dataset.save_to_disk(str(tmp_path / "pal_synth"))
    for split in dataset.values():
        split.info.version = PAL_SYNTH_VERSION
    with pytest.raises(SystemExit, match=r"built by version before 2\.0\.0, which gives other rows"):
        demo.build_data(tmp_path, size=None)


def test_stage_subsets(dataset):
    train = dataset["train"]
    stage_1, stage_2, stage_3 = (stage_subset(train, stage) for stage in (1, 2, 3))
    assert set(stage_1["task_type"]) == {"classification"}
    assert set(stage_2["task_type"]) == {"classification", "closed"}
    assert set(stage_2["task"]) == set(TASK_TYPES) - {"open_qa"}  # stage 3 adds open-ended QA (paper, §4)
    assert len(stage_3) == len(train)
    assert len(stage_1) < len(stage_2) < len(stage_3)
    subsets = stage_subset(dataset, 1)
    assert list(subsets) == list(SPLITS) and set(subsets["test"]["task"]) == {"classification"}
    with pytest.raises(ValueError, match="stage"):
        stage_subset(train, 4)


def test_melodies_go_the_way_their_labels_say():
    rows = _plan_split("train", 600, seed=0)
    melodies = [event.params for row in rows for event in row.clip.events if event.params.get("kind") == "melody"]
    assert len(melodies) > 20
    for melody in melodies:
        notes = melody["midi_notes"] if melody["direction"] == "up" else melody["midi_notes"][::-1]
        assert all(low < high for low, high in zip(notes, notes[1:])), melody
