"""Converters into PAL's schema, each on a small fake copy of its source format with real audio files."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from datasets import Audio
from torchcodec.encoders import AudioEncoder

from modeling_pal.data import (
    PAL_FEATURES,
    convert_audiocaps,
    convert_audiofolder,
    convert_clotho,
    convert_esc50,
    convert_librispeech,
    convert_openaqa,
    to_pal_dataset,
)
from modeling_pal.processing_pal import load_audio, resample


def write_audio(path: Path, seconds: float = 0.5, rate: int = 22050) -> Path:
    """A short tone; the format follows the file extension (wav, flac)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, 0.3 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * rate)) / rate), rate)
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def check_rows(dataset, task: str, ids: list[str]) -> None:
    """Schema, ids, chat messages and decodable 16 kHz audio."""
    assert dataset.features == PAL_FEATURES and dataset["id"] == ids
    for row in dataset:
        assert row["task"] == task
        assert row["messages"][0]["content"] == [
            {"type": "audio", "text": None},
            {"type": "text", "text": row["question"]},
        ]
        assert row["messages"][1]["content"] == [{"type": "text", "text": row["answer"]}]
        samples = row["audio"].get_all_samples()
        assert samples.sample_rate == 16000 and samples.data.shape[1] == pytest.approx(row["duration"] * 16000, abs=2)


def test_openaqa(tmp_path):
    write_audio(tmp_path / "audio" / "Yabc.flac", seconds=1.0)
    write_audio(tmp_path / "audio" / "clips" / "b.wav")
    entries = [
        {"audio_id": "/data/sls/audioset/Yabc.flac", "instruction": "Classify.", "output": "Dog", "task": "cla_label"},
        {"wav": "clips/b.wav", "instruction": "Caption it.", "output": "A tone.", "dataset": "x", "task": "caption"},
        {"wav": "clips/b.wav", "instruction": "Is it loud?", "output": "No.", "task": "closed-ended question"},
        {"wav": "clips/b.wav", "instruction": "Why?", "output": "Because.", "task": "open-ended question"},
    ]
    (tmp_path / "openaqa.json").write_text(json.dumps(entries))
    dataset = convert_openaqa(tmp_path / "openaqa.json", audio_dir=tmp_path / "audio")
    assert dataset["task"] == ["classification", "captioning", "open_qa", "open_qa"]
    assert dataset["task_type"] == ["classification", "closed", "closed", "open"]  # captioning trains in stage 2
    assert dataset["id"] == ["Yabc-0", "b-1", "b-2", "b-3"]
    assert dataset["label"] == ["Dog", "", "", ""] and dataset["caption"] == ["", "A tone.", "", ""]
    assert dataset["question"][2] == "Is it loud?" and dataset["duration"][0] == pytest.approx(1.0)


def test_audiocaps(tmp_path):
    write_audio(tmp_path / "wav" / "Yxyz.wav")
    write_audio(tmp_path / "wav" / "Yuvw.wav")
    rows = [
        {"audiocap_id": "91139", "youtube_id": "xyz", "start_time": "30", "caption": "A dog barks"},
        {"audiocap_id": "58146", "youtube_id": "uvw", "start_time": "0", "caption": "Rain falls"},
    ]
    dataset = convert_audiocaps(write_csv(tmp_path / "val.csv", rows), tmp_path / "wav", "Y{youtube_id}.wav")
    check_rows(dataset, "captioning", ["91139", "58146"])
    assert dataset["question"] == ["Describe the audio."] * 2 and dataset["answer"] == dataset["caption"]
    assert dataset["answer"] == ["A dog barks", "Rain falls"] and dataset["task_type"] == ["closed"] * 2


def test_clotho(tmp_path):
    write_audio(tmp_path / "development" / "rain on roof.wav")
    captions = {f"caption_{k}": f"caption number {k}" for k in range(1, 6)}
    dataset = convert_clotho(
        write_csv(tmp_path / "captions.csv", [{"file_name": "rain on roof.wav", **captions}]), tmp_path / "development"
    )
    check_rows(dataset, "captioning", [f"rain on roof-{k}" for k in range(1, 6)])
    assert dataset["caption"] == list(captions.values())


def test_esc50(tmp_path):
    rows = [
        {"filename": "1-100032-A-0.wav", "fold": "1", "target": "0", "category": "dog", "esc10": "True"},
        {"filename": "1-100038-A-14.wav", "fold": "1", "target": "14", "category": "chirping_birds", "esc10": "False"},
        {"filename": "5-9032-A-0.wav", "fold": "5", "target": "0", "category": "dog", "esc10": "True"},
        {"filename": "5-10000-A-1.wav", "fold": "5", "target": "1", "category": "rooster", "esc10": "True"},
    ]
    rows = [row | {"src_file": row["filename"][2:7], "take": "A"} for row in rows]
    for row in rows:
        write_audio(tmp_path / "audio" / row["filename"], rate=44100)
    dataset = convert_esc50(write_csv(tmp_path / "esc50.csv", rows), tmp_path / "audio", folds=[1])
    check_rows(dataset, "classification", ["1-100032-A-0", "1-100038-A-14"])
    assert dataset["label"] == ["dog", "chirping birds"] and dataset["answer"] == dataset["label"]
    assert dataset["choices"][0] == ["chirping birds", "dog", "rooster"]
    assert dataset["question"][0] == "What sound is this? Choose one of: chirping birds, dog, rooster."
    assert set(dataset["task_type"]) == {"classification"}


def test_librispeech(tmp_path):
    chapter = tmp_path / "dev-clean" / "84" / "121123"
    write_audio(chapter / "84-121123-0000.flac", rate=16000)
    write_audio(chapter / "84-121123-0001.flac", rate=16000)
    (chapter / "84-121123.trans.txt").write_text("84-121123-0000 GO DO YOU HEAR\n84-121123-0001 BUT IN LESS THAN\n")
    dataset = convert_librispeech(tmp_path / "dev-clean")
    check_rows(dataset, "transcription", ["84-121123-0000", "84-121123-0001"])
    assert (
        dataset["transcript"] == ["go do you hear", "but in less than"] and dataset["answer"] == dataset["transcript"]
    )
    assert dataset["language"] == ["en", "en"] and dataset["question"][0] == "Transcribe the speech."


def test_audiofolder_csv_and_jsonl(tmp_path):
    write_audio(tmp_path / "data" / "a.wav")
    write_audio(tmp_path / "data" / "b.wav")
    write_csv(tmp_path / "metadata.csv", [{"file_name": "data/a.wav", "caption": "Birds sing."}])
    check_rows(convert_audiofolder(tmp_path), "captioning", ["data/a.wav"])
    records = [{"file_name": "data/a.wav", "label": "cat"}, {"file_name": "data/b.wav", "label": "dog", "id": "b"}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(map(json.dumps, records)))
    dataset = convert_audiofolder(tmp_path)
    check_rows(dataset, "classification", ["data/a.wav", "b"])
    assert dataset["choices"] == [["cat", "dog"]] * 2 and dataset["label"] == ["cat", "dog"]
    transcripts = convert_audiofolder(tmp_path, text_column="label", task="transcription")
    assert transcripts["transcript"] == ["cat", "dog"] and transcripts["choices"] == [[], []]


def test_audio_values_of_every_kind(tmp_path):
    path = write_audio(tmp_path / "a.wav", seconds=1.0)
    write_csv(tmp_path / "metadata.csv", [{"file_name": "a.wav", "text": "A tone."}])
    decoder = convert_audiofolder(tmp_path)[0]["audio"]  # a datasets AudioDecoder
    values = [str(path), path, {"path": str(path)}, {"array": np.ones(8000) * 0.1, "sampling_rate": 8000}, decoder]
    rows = [
        {"id": str(i), "audio": value, "task": "open_qa", "question": "Q?", "answer": "A."}
        for i, value in enumerate(values)
    ]
    dataset = to_pal_dataset(rows)
    check_rows(dataset, "open_qa", [str(i) for i in range(len(values))])
    assert dataset["duration"] == pytest.approx([1.0] * len(values))
    assert dataset["task_type"] == ["open"] * len(values) and dataset["events"] == [[]] * len(values)


@pytest.fixture
def captions_with_bad_rows(tmp_path) -> Path:
    write_audio(tmp_path / "wav" / "good.wav")
    (tmp_path / "wav" / "corrupt.wav").write_bytes(b"RIFF\x00\x00 this is not audio")
    rows = [
        {"audiocap_id": "1", "youtube_id": "good", "start_time": "0", "caption": "Fine."},
        {"audiocap_id": "2", "youtube_id": "missing", "start_time": "0", "caption": "Gone."},
        {"audiocap_id": "3", "youtube_id": "corrupt", "start_time": "0", "caption": "Broken."},
    ]
    return write_csv(tmp_path / "captions.csv", rows)


def test_missing_file_raises_naming_the_row(captions_with_bad_rows):
    with pytest.raises(FileNotFoundError, match=r"row '2' \(audio .*missing\.wav\)"):
        convert_audiocaps(captions_with_bad_rows, captions_with_bad_rows.parent / "wav")


def test_corrupt_file_raises_naming_the_row(tmp_path, captions_with_bad_rows):
    rows = [{"audiocap_id": "3", "youtube_id": "corrupt", "start_time": "0", "caption": "Broken."}]
    with pytest.raises(ValueError, match=r"row '3' \(audio .*corrupt\.wav\): cannot decode"):
        convert_audiocaps(write_csv(tmp_path / "bad.csv", rows), tmp_path / "wav")


def test_bad_rows_are_skipped_with_a_warning(captions_with_bad_rows):
    with pytest.warns(UserWarning, match=r"skipped 2 rows .*\['2', '3'\]"):
        dataset = convert_audiocaps(captions_with_bad_rows, captions_with_bad_rows.parent / "wav", on_bad_audio="skip")
    check_rows(dataset, "captioning", ["1"])
    with pytest.raises(ValueError, match="on_bad_audio"):
        convert_audiocaps(captions_with_bad_rows, captions_with_bad_rows.parent / "wav", on_bad_audio="ignore")


def test_conversions_with_no_rows_left_name_the_input_and_why(tmp_path):
    (tmp_path / "openaqa.json").write_text(json.dumps([{"wav": "gone.wav", "instruction": "Q?", "output": "A."}]))
    with pytest.warns(UserWarning, match="skipped 1 rows"):
        with pytest.raises(ValueError, match=r"all 1 rows .*skip.*gone\.wav"):
            convert_openaqa(tmp_path / "openaqa.json", tmp_path, on_bad_audio="skip")
    rows = [{"filename": "1-1-A-0.wav", "fold": "1", "target": "0", "category": "dog"}]
    with pytest.raises(ValueError, match=r"esc50\.csv has no rows in folds \[5\] \(its folds: \[1\]\)"):
        convert_esc50(write_csv(tmp_path / "esc50.csv", rows), tmp_path, folds=[5])
    with pytest.raises(ValueError, match=r"no \*\.trans\.txt transcripts under .*wrong"):
        convert_librispeech(tmp_path / "wrong")
    (tmp_path / "header_only.csv").write_text("audiocap_id,youtube_id,start_time,caption\n")
    with pytest.raises(ValueError, match=r"header_only\.csv has no rows"):
        convert_audiocaps(tmp_path / "header_only.csv", tmp_path)
    with pytest.raises(ValueError, match="no rows"):
        to_pal_dataset([])


@pytest.mark.parametrize(
    "name,metadata",
    [
        ("metadata.csv", "file_name,caption\na.wav,A dog.\n"),
        ("metadata.jsonl", '{"file_name": "a.wav", "caption": "A dog."}\n'),
    ],
)
def test_metadata_with_a_byte_order_mark(tmp_path, name, metadata):
    write_audio(tmp_path / "a.wav")
    (tmp_path / name).write_text(metadata, encoding="utf-8-sig")
    check_rows(convert_audiofolder(tmp_path), "captioning", ["a.wav"])


def test_audiofolder_ids_of_a_clip_with_several_captions_are_unique(tmp_path):
    write_audio(tmp_path / "a.wav")
    write_audio(tmp_path / "b.wav")
    records = [("a.wav", "A."), ("b.wav", "B."), ("a.wav", "A second caption.")]
    write_csv(tmp_path / "metadata.csv", [{"file_name": name, "caption": caption} for name, caption in records])
    dataset = convert_audiofolder(tmp_path)
    check_rows(dataset, "captioning", ["a.wav-1", "b.wav", "a.wav-2"])
    assert dataset["caption"] == ["A.", "B.", "A second caption."]


@pytest.mark.parametrize("metadata", ['{"file_name": "b.wav", "label": null}', '{"file_name": "b.wav"}'])
def test_audiofolder_row_without_a_text_value_raises_naming_it(tmp_path, metadata):
    write_audio(tmp_path / "a.wav")
    write_audio(tmp_path / "b.wav")
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.wav", "label": "dog"}\n' + metadata + "\n")
    with pytest.raises(ValueError, match=r"row 'b\.wav' has no 'label' value"):
        convert_audiofolder(tmp_path)


def test_stereo_sources_are_stored_mono_as_the_processor_hears_them(tmp_path):
    rate = 22050
    time = np.arange(rate) / rate
    stereo = np.stack([0.5 * np.sin(2 * np.pi * 440 * time), 0.25 * np.sin(2 * np.pi * 660 * time)], axis=1)
    soundfile.write(tmp_path / "stereo.wav", stereo, rate)
    write_audio(tmp_path / "mono.wav", seconds=1.0, rate=rate)
    # a format libsndfile cannot read (the processor decodes it with torchcodec)
    AudioEncoder(torch.from_numpy(stereo.T).float(), sample_rate=rate).to_file(str(tmp_path / "stereo.m4a"))
    names = ["stereo.wav", "mono.wav", "stereo.m4a"]
    records = [{"file_name": name, "caption": "Tones."} for name in names]
    (tmp_path / "metadata.jsonl").write_text("\n".join(map(json.dumps, records)))
    dataset = convert_audiofolder(tmp_path)
    check_rows(dataset, "captioning", names)
    decoded = [row["audio"].get_all_samples().data for row in dataset]
    assert [samples.shape[0] for samples in decoded] == [1, 1, 1]
    for index in (0, 2):  # stored decoded: the processor's down-mix and resampling
        expected = resample(*load_audio(str(tmp_path / names[index])), 16000)
        np.testing.assert_allclose(decoded[index][0].numpy(), expected, atol=1e-4)
    stored = dataset.cast_column("audio", Audio(decode=False))["audio"]
    assert stored[1]["path"] == str(tmp_path / "mono.wav")  # mono files stay paths
