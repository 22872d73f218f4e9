"""Export predictions in the format of the official MMAU evaluation script (`evaluation.py --input FILE`)."""

import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path

MMAU_FIELDS = ("id", "question", "choices", "answer", "task", "difficulty", "model_prediction")
# The official script counts accuracy in tables keyed by these values only (any other is a KeyError there).
MMAU_TASKS = ("sound", "music", "speech")
MMAU_DIFFICULTIES = ("easy", "medium", "hard")


def to_mmau_records(
    rows: Iterable[Mapping], predictions: Sequence[str], exclude: Collection[str] = ("audio",)
) -> list[dict]:
    """
    Adds each raw generated answer to its MMAU benchmark row as `model_prediction`.

    The other keys of a row are kept (the official script reports accuracy per `task` and `difficulty`), except
    those in `exclude`, such as the decoded clip of a `datasets` row.

    Args:
        rows (`Iterable[Mapping]`): The benchmark entries, with at least `id`, `question`, `choices` and `answer`.
        predictions (`Sequence[str]`): The generated text for each row, in the same order.
        exclude (`Collection[str]`, *optional*, defaults to `("audio",)`): Keys of the rows left out of the records.

    Returns:
        `list[dict]`: One record per row, valid for `validate_mmau_records`.
    """
    rows = list(rows)
    if len(rows) != len(predictions):
        raise ValueError(f"Got {len(rows)} MMAU rows but {len(predictions)} predictions.")
    records = [
        {**{key: value for key, value in row.items() if key not in exclude}, "model_prediction": prediction}
        for row, prediction in zip(rows, predictions)
    ]
    validate_mmau_records(records)
    return records


def _is_string_list(value: object) -> bool:
    return isinstance(value, list) and len(value) > 0 and all(isinstance(item, str) for item in value)


def validate_mmau_records(records: Sequence[Mapping]) -> None:
    """
    Checks records against the MMAU submission format.

    Every record needs the `MMAU_FIELDS`: `choices` a non-empty list of strings, `answer` one of them, `task` one of
    `MMAU_TASKS`, `difficulty` one of `MMAU_DIFFICULTIES` (the official script reports accuracy per task and
    difficulty, and fails on any other value), and `id`, `question` and `model_prediction` strings.

    Raises:
        `ValueError`: naming the first bad record (by position and id) and field.
    """
    if not isinstance(records, list):
        raise ValueError(f"MMAU records must be a list, got {type(records).__name__}.")
    for index, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise ValueError(f"MMAU record {index} must be a dict, got {type(record).__name__}.")
        name = f"MMAU record {index} (id={record.get('id')!r})"
        for field in MMAU_FIELDS:
            if field not in record:
                raise ValueError(f"{name} has no field {field!r}.")
            value = record[field]
            valid = _is_string_list(value) if field == "choices" else isinstance(value, str)
            if not valid:
                expected = "a non-empty list of strings" if field == "choices" else "a string"
                raise ValueError(f"{name}: field {field!r} must be {expected}, got {value!r}.")
        if record["answer"] not in record["choices"]:
            raise ValueError(
                f"{name}: field 'answer' {record['answer']!r} is not among its choices {record['choices']}."
            )
        for field, allowed in (("task", MMAU_TASKS), ("difficulty", MMAU_DIFFICULTIES)):
            if record[field] not in allowed:
                raise ValueError(
                    f"{name}: field {field!r} {record[field]!r} is not one of MMAU's {list(allowed)}, which its "
                    "evaluation.py counts accuracy by."
                )


def write_mmau_json(path: str | Path, records: Sequence[Mapping]) -> Path:
    """
    Validates `records` and writes them to `path` as the JSON list that MMAU's `evaluation.py` reads.

    Returns:
        `Path`: The file written.
    """
    validate_mmau_records(records)
    path = Path(path)
    path.write_text(json.dumps(records, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
