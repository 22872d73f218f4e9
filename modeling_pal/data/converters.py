"""
Converters from audio datasets as people have them on disk into PAL's row schema (`docs/data_schema.md`).

Every converter validates each row's audio while converting (a missing or undecodable file raises an error naming
the row, or is skipped with a warning when `on_bad_audio="skip"`; a conversion left with no row raises a `ValueError`
saying why), fills the columns the source lacks with `""`, `[]` or `0.0`, writes the chat `messages`, and returns a
`datasets.Dataset` whose `audio` column is `Audio(sampling_rate=16000)`.
"""

from __future__ import annotations

import csv
import json
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import soundfile
from datasets import Dataset
from tqdm.auto import tqdm

from ..processing_pal import load_audio, resample
from .synth import PAL_FEATURES, QUESTIONS, SAMPLING_RATE, TASK_TYPES, chat_messages

MAX_LISTED_CHOICES = 50  # classification questions list their choices up to this many classes
ANSWER_COLUMNS = {"captioning": "caption", "transcription": "transcript", "classification": "label"}
# (substring of an OpenAQA/LTU task name, PAL task, PAL task type), first match wins; anything else is open QA.
OPENAQA_TASKS = (
    ("cla", "classification", "classification"),
    ("caption", "captioning", "closed"),
    ("asr", "transcription", "closed"),
    ("temporal", "temporal_order", "closed"),
    ("closed", "open_qa", "closed"),
)
# audiofolder metadata columns that hold the answer, in order of preference, with the task each implies.
AUDIOFOLDER_COLUMNS = {
    "caption": "captioning",
    "text": "captioning",
    "transcription": "transcription",
    "sentence": "transcription",
    "label": "classification",
}
BAD_AUDIO_POLICIES = ("raise", "skip")
TEXT_ENCODING = "utf-8-sig"  # text metadata files: UTF-8, with or without the byte order mark Excel writes


def classification_question(choices: Sequence[str]) -> tuple[str, list[str]]:
    """The question of a classification row and its `choices` (listed only up to `MAX_LISTED_CHOICES` classes)."""
    if len(choices) > MAX_LISTED_CHOICES:
        return "What sound is this?", []
    return QUESTIONS["classification"][0].format(choices=", ".join(choices)), list(choices)


def labelled_row(row_id: str, audio: object, task: str, text: str, choices: Sequence[str] = ()) -> dict:
    """
    A row whose answer is a caption (`task="captioning"`), a transcript (`"transcription"`) or a class label
    (`"classification"`, with `choices`), asked with the canonical question of its task.
    """
    if task == "classification":
        question, choices = classification_question(choices)
    else:
        question, choices = QUESTIONS[task][0], []
    row = {"id": row_id, "audio": audio, "task": task, "question": question, "answer": text, "choices": choices}
    return row | {ANSWER_COLUMNS[task]: text}


def _is_mono_file(path: str | Path) -> bool:
    """Whether libsndfile reads `path` as one channel; files only torchcodec decodes (m4a, webm) count as not."""
    try:
        return soundfile.info(str(path)).channels == 1
    except Exception:  # soundfile raises its own LibsndfileError subclasses
        return False


def _decode(value: object) -> tuple[object, float]:
    """
    Validates one audio value: returns what the `audio` column stores and the clip's duration in seconds. A mono file
    is stored as its path; anything else is stored decoded, down-mixed as the processor does, at 16 kHz (a
    multi-channel file kept as a path would decode to several channels).
    """
    samples, rate = load_audio(value, SAMPLING_RATE)
    if isinstance(value, (str, Path)) and _is_mono_file(value):
        return {"path": str(Path(value).absolute()), "bytes": None}, len(samples) / rate
    return {"array": resample(samples, rate, SAMPLING_RATE), "sampling_rate": SAMPLING_RATE}, len(samples) / rate


def to_pal_dataset(rows: Iterable[dict], on_bad_audio: str = "raise") -> Dataset:
    """
    Validates rows' audio and returns them as a `Dataset` in PAL's schema.

    Args:
        rows: dicts with `id`, `audio`, `task`, `question` and `answer`, and optionally any other schema column.
            `audio` may be a path, a `{"array", "sampling_rate"}` / `{"path"}` / `{"bytes"}` dict, a 1-D array at
            16 kHz, or a `datasets` `AudioDecoder`; paths to mono files stay paths, other values (multi-channel
            files included) are stored decoded and down-mixed to mono at 16 kHz.
        on_bad_audio: `"raise"` (default) raises the decoding error, prefixed with the row's id and audio;
            `"skip"` drops such rows and warns once with their count.

    Raises:
        `FileNotFoundError` (missing file) or `ValueError` (undecodable, empty or non-finite audio) naming the row;
        `ValueError` when no row is left: none was given, or `"skip"` dropped them all (the error names the first).
    """
    if on_bad_audio not in BAD_AUDIO_POLICIES:
        raise ValueError(f"on_bad_audio must be one of {BAD_AUDIO_POLICIES}, got {on_bad_audio!r}")
    records, skipped, decoded = [], [], {}
    for row in tqdm(rows, desc="checking audio", unit=" rows"):
        key = str(row["audio"]) if isinstance(row["audio"], (str, Path)) else None
        try:
            audio, duration = decoded[key] if key in decoded else _decode(row["audio"])
        except (FileNotFoundError, ValueError) as error:
            where = row["audio"] if key is not None else type(row["audio"]).__name__
            message = f"row {row['id']!r} (audio {where}): {error}"
            if on_bad_audio == "raise":
                raise type(error)(message) from error
            skipped.append((row["id"], message))
            continue
        if key is not None:
            decoded[key] = audio, duration
        records.append(_complete(row, audio, duration))
    if skipped:
        ids = [row_id for row_id, _ in skipped[:10]]
        warnings.warn(f"skipped {len(skipped)} rows with missing or unreadable audio: {ids}", stacklevel=2)
    if not records:
        raise ValueError(_nothing_left(skipped))
    return Dataset.from_list(records, features=PAL_FEATURES)


def _nothing_left(skipped: list[tuple[str, str]]) -> str:
    """Why a conversion has no row: none was given, or every row's audio was skipped (`skipped`: id and reason)."""
    if not skipped:
        return "no rows to convert"
    return f"all {len(skipped)} rows have missing or unreadable audio (on_bad_audio='skip'), e.g. {skipped[0][1]}"


def _complete(row: dict, audio: object, duration: float) -> dict:
    """Fills a row's missing schema columns and its chat messages."""
    defaults = {"choices": [], "label": "", "events": [], "caption": "", "transcript": "", "language": ""}
    row = (
        defaults
        | row
        | {
            "id": str(row["id"]),
            "audio": audio,
            "task_type": row.get("task_type") or TASK_TYPES.get(row["task"], "open"),
            "messages": chat_messages(row["question"], row["answer"]),
            "duration": duration,
        }
    )
    return {column: row[column] for column in PAL_FEATURES}


def _require_rows(records: list, source: str | Path) -> list:
    """`records`, or a `ValueError` naming `source` when there are none."""
    if not records:
        raise ValueError(f"{source} has no rows")
    return records


def _read_csv(csv_file: str | Path) -> list[dict]:
    """A CSV file's rows as dicts."""
    with open(csv_file, newline="", encoding=TEXT_ENCODING) as file:
        return _require_rows(list(csv.DictReader(file)), csv_file)


def _openaqa_task(name: str) -> tuple[str, str]:
    """PAL's `(task, task_type)` for an OpenAQA/LTU task name such as "cla_label" or "open-ended question"."""
    return next(((task, kind) for key, task, kind in OPENAQA_TASKS if key in name.lower()), ("open_qa", "open"))


def _resolve(audio_dir: str | Path | None, name: str) -> Path:
    """`name` under `audio_dir`; absolute source paths (another machine's) keep only their file name there."""
    if audio_dir is None:
        return Path(name)
    return Path(audio_dir) / (Path(name).name if Path(name).is_absolute() else name)


def convert_openaqa(
    json_file: str | Path, audio_dir: str | Path | None = None, on_bad_audio: str = "raise"
) -> Dataset:
    """
    Converts an OpenAQA / LTU instruction file: a JSON list of `{"audio_id" or "wav", "instruction", "output",
    "dataset", "task"}`. The task name maps to PAL's tasks by `OPENAQA_TASKS` (e.g. "cla_label" → classification,
    "caption" → captioning, "closed-ended question" → open QA of type closed, anything else → open QA).

    Args:
        json_file: the JSON file.
        audio_dir: where the audio lies; relative audio paths are joined to it, absolute ones keep their file name.
            `None` uses the paths as written.
        on_bad_audio: `"raise"` or `"skip"` (see `to_pal_dataset`).
    """
    entries = _require_rows(json.loads(Path(json_file).read_text(encoding=TEXT_ENCODING)), json_file)
    rows = []
    for index, entry in enumerate(entries):
        audio = entry.get("audio_id") or entry["wav"]
        task, task_type = _openaqa_task(entry.get("task", ""))
        row = {
            "id": entry.get("id") or f"{Path(audio).stem}-{index}",
            "audio": _resolve(audio_dir, audio),
            "task": task,
            "task_type": task_type,
            "question": entry["instruction"],
            "answer": entry["output"],
        }
        rows.append(row | ({ANSWER_COLUMNS[task]: entry["output"]} if task in ANSWER_COLUMNS else {}))
    return to_pal_dataset(rows, on_bad_audio)


def convert_audiocaps(
    csv_file: str | Path,
    audio_dir: str | Path,
    filename_template: str = "{youtube_id}.wav",
    on_bad_audio: str = "raise",
) -> Dataset:
    """
    Converts an AudioCaps split CSV (`audiocap_id, youtube_id, start_time, caption`) into captioning rows.

    Args:
        csv_file: e.g. `train.csv`.
        audio_dir: the folder of downloaded clips.
        filename_template: each clip's file name, formatted with the CSV row, e.g. `"Y{youtube_id}.wav"` or
            `"{audiocap_id}.flac"`.
        on_bad_audio: `"raise"` or `"skip"` (see `to_pal_dataset`).
    """
    rows = [
        labelled_row(
            record["audiocap_id"],
            Path(audio_dir) / filename_template.format(**record),
            "captioning",
            record["caption"],
        )
        for record in _read_csv(csv_file)
    ]
    return to_pal_dataset(rows, on_bad_audio)


def convert_clotho(csv_file: str | Path, audio_dir: str | Path, on_bad_audio: str = "raise") -> Dataset:
    """
    Converts a Clotho captions CSV (`file_name, caption_1 … caption_5`) into one captioning row per caption, with
    ids `"<file stem>-<k>"`.
    """
    rows = []
    for record in _read_csv(csv_file):
        captions = [record[column] for column in sorted(record) if column.startswith("caption_") and record[column]]
        path = Path(audio_dir) / record["file_name"]
        rows += [
            labelled_row(f"{path.stem}-{k}", path, "captioning", caption) for k, caption in enumerate(captions, 1)
        ]
    return to_pal_dataset(rows, on_bad_audio)


def _class_name(label: str) -> str:
    return label.replace("_", " ")


def convert_esc50(
    csv_file: str | Path,
    audio_dir: str | Path,
    folds: Sequence[int] | None = None,
    on_bad_audio: str = "raise",
) -> Dataset:
    """
    Converts ESC-50 (`meta/esc50.csv`: `filename, fold, target, category, esc10, src_file, take`) into
    classification rows whose choices are all the file's categories (`"chirping_birds"` → `"chirping birds"`).

    Args:
        csv_file: `meta/esc50.csv`.
        audio_dir: the `audio/` folder.
        folds: keep only these folds (e.g. `[5]` for a test split); `None` keeps all.
        on_bad_audio: `"raise"` or `"skip"` (see `to_pal_dataset`).
    """
    records = _read_csv(csv_file)
    choices = sorted({_class_name(record["category"]) for record in records})
    rows = [
        labelled_row(
            Path(record["filename"]).stem,
            Path(audio_dir) / record["filename"],
            "classification",
            _class_name(record["category"]),
            choices,
        )
        for record in records
        if folds is None or int(record["fold"]) in folds
    ]
    if not rows:
        present = sorted({int(record["fold"]) for record in records})
        raise ValueError(f"{csv_file} has no rows in folds {list(folds)} (its folds: {present})")
    return to_pal_dataset(rows, on_bad_audio)


def convert_librispeech(
    root: str | Path,
    audio_dir: str | Path | None = None,
    audio_extension: str = ".flac",
    on_bad_audio: str = "raise",
) -> Dataset:
    """
    Converts LibriSpeech-style transcripts into transcription rows (English, lower-cased words): every
    `<speaker>-<chapter>.trans.txt` under `root` holds lines `"<utterance id> <WORDS>"`, the audio being
    `<utterance id>.flac` next to it (or in `audio_dir` when given).
    """
    files = sorted(Path(root).rglob("*.trans.txt"))
    if not files:
        raise ValueError(f"no *.trans.txt transcripts under {root}")
    rows = []
    for transcripts in files:
        folder = Path(audio_dir) if audio_dir is not None else transcripts.parent
        for line in transcripts.read_text(encoding=TEXT_ENCODING).splitlines():
            utterance, _, words = line.strip().partition(" ")
            if utterance:
                path = folder / f"{utterance}{audio_extension}"
                rows.append(labelled_row(utterance, path, "transcription", words.lower()) | {"language": "en"})
    return to_pal_dataset(rows, on_bad_audio)


def _read_metadata(root: Path) -> list[dict]:
    """An audiofolder's `metadata.jsonl` or `metadata.csv`."""
    if (root / "metadata.jsonl").is_file():
        lines = (root / "metadata.jsonl").read_text(encoding=TEXT_ENCODING).splitlines()
        return _require_rows([json.loads(line) for line in lines if line.strip()], root / "metadata.jsonl")
    if (root / "metadata.csv").is_file():
        return _read_csv(root / "metadata.csv")
    raise FileNotFoundError(f"no metadata.jsonl or metadata.csv in {root}")


def convert_audiofolder(
    root: str | Path,
    audio_dir: str | Path | None = None,
    text_column: str | None = None,
    task: str | None = None,
    on_bad_audio: str = "raise",
) -> Dataset:
    """
    Converts a Hugging Face `audiofolder` (a `metadata.jsonl` or `metadata.csv` with `file_name` and a text column).

    Args:
        root: the folder holding the metadata file.
        audio_dir: the folder `file_name` is relative to (default: `root`).
        text_column: the answer column; default: the first of `AUDIOFOLDER_COLUMNS` the metadata has.
        task: `"captioning"`, `"transcription"` or `"classification"` (choices: every label in the metadata);
            default: implied by the text column (`caption`/`text` → captioning, `transcription`/`sentence` →
            transcription, `label` → classification).
        on_bad_audio: `"raise"` or `"skip"` (see `to_pal_dataset`).

    The row id is the metadata's `id` column if it has one, else `file_name`; an id that several rows share (a clip
    with several captions) is numbered `"<id>-<k>"` (k = 1, 2, … in metadata order), so every row id is unique. A
    row whose text column is missing, null or empty raises a `ValueError` naming it.
    """
    records = _read_metadata(Path(root))
    text_column = text_column or next((column for column in AUDIOFOLDER_COLUMNS if column in records[0]), None)
    if text_column is None or text_column not in records[0]:
        raise ValueError(
            f"metadata needs a text column, one of {list(AUDIOFOLDER_COLUMNS)}; it has {list(records[0])}"
        )
    task = task or AUDIOFOLDER_COLUMNS.get(text_column, "captioning")
    if task not in ANSWER_COLUMNS:
        raise ValueError(f"task must be one of {list(ANSWER_COLUMNS)}, got {task!r}")
    ids = _unique_ids([str(record.get("id") or record["file_name"]) for record in records])
    texts = [_metadata_text(record, text_column, row_id) for record, row_id in zip(records, ids)]
    choices = sorted(set(texts)) if task == "classification" else ()
    folder = Path(audio_dir) if audio_dir is not None else Path(root)
    rows = [
        labelled_row(row_id, folder / record["file_name"], task, text, choices)
        for row_id, record, text in zip(ids, records, texts)
    ]
    return to_pal_dataset(rows, on_bad_audio)


def _unique_ids(ids: list[str]) -> list[str]:
    """`ids` with each one that occurs several times numbered `"<id>-<k>"` (k = 1, 2, …); the others unchanged."""
    counts, seen = Counter(ids), Counter()
    unique = []
    for row_id in ids:
        seen[row_id] += 1
        unique.append(f"{row_id}-{seen[row_id]}" if counts[row_id] > 1 else row_id)
    return unique


def _metadata_text(record: dict, column: str, row_id: str) -> str:
    """A metadata row's answer text; a missing, null or empty value is a bad row and raises naming it."""
    value = record.get(column)
    if value is None or not str(value).strip():
        raise ValueError(f"row {row_id!r} has no {column!r} value")
    return str(value)
