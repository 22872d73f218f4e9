"""Batched greedy evaluation of a PAL model on rows of PAL's schema: per-task metrics, chance levels, MMAU export."""

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from datasets import Audio, Dataset
from tqdm.auto import tqdm

from .answers import normalize_text, parse_choice

CHOICE_TASKS = ("classification", "speech_detection", "language_id", "temporal_order", "counting")
CAPTION_TASKS = ("captioning", "open_qa")
ASR_TASKS = ("transcription",)
SCORED_TASKS = CHOICE_TASKS + CAPTION_TASKS + ASR_TASKS
# Greedy whatever the checkpoint's generation config says (it may ask for sampling or beams).
GREEDY = {"do_sample": False, "num_beams": 1}


def _prompt_turns(messages: list[dict]) -> list[dict]:
    """The turns before the last assistant turn (the answer); all of them in a chat that holds no answer."""
    answers = [i for i, message in enumerate(messages) if message["role"] == "assistant"]
    return messages[: answers[-1]] if answers else messages


def prompt_messages(row: dict) -> list[dict]:
    """
    The row's chat up to (not including) its last assistant turn, as `PalProcessor.apply_chat_template` takes it:
    each audio item holds its clip as a 16 kHz array (items without a value take the row's `audio` column). A chat
    without an assistant turn (the answer only in the `answer` column) is the prompt as a whole.
    """
    from ..training.collator import normalize_messages

    prompt, clips = normalize_messages(_prompt_turns(row["messages"]), row.get("audio"))
    clips = iter(clips)
    for message in prompt:
        for item in message["content"] if isinstance(message["content"], list) else []:
            if item["type"] == "audio":
                item["audio"] = _as_array(next(clips))
    return prompt


def _as_array(value) -> np.ndarray:
    """Decoded audio as a float32 array at 16 kHz (PAL-Synth's rate; other rates are resampled)."""
    from ..processing_pal import load_audio, resample

    samples, rate = load_audio(value, sampling_rate=16000)
    return resample(samples, rate, 16000)


def _clip_identity(audio) -> str | None:
    """
    A clip's identity without decoding it: a hash of its encoded bytes, else its file path (`None` for arrays). The
    bytes come first: `save_to_disk` keeps only the base name of an embedded file's path, which two clips can share.
    """
    if isinstance(audio, Mapping) and audio.get("bytes"):
        return hashlib.sha1(audio["bytes"]).hexdigest()
    if isinstance(audio, Mapping) and audio.get("path"):
        return str(audio["path"])
    if isinstance(audio, (str, Path)):
        return str(audio)
    return None


def _clip_identities(rows) -> list[str | None]:
    """Every row's `_clip_identity`; a `datasets.Dataset`'s `Audio` column is read undecoded."""
    if isinstance(rows, Dataset) and isinstance(rows.features.get("audio"), Audio):
        return [_clip_identity(audio) for audio in rows.cast_column("audio", Audio(decode=False))["audio"]]
    return [_clip_identity(row.get("audio")) for row in rows]


def _prompt_identity(row: dict, clip: str) -> str | None:
    """The row's prompt (its chat before the last answer) and clip as one key; `None` when an audio item of the
    chat holds decoded samples or bytes (they have no identity short of hashing them)."""
    try:
        return json.dumps([_prompt_turns(row["messages"]), clip], sort_keys=True)
    except TypeError:
        return None


def reference_groups(rows) -> list[list[int]]:
    """
    Row indices grouped for generation and scoring: captioning and open-QA rows with the same task, prompt (every
    turn before the answer) and clip (converted Clotho and AudioCaps hold one row per caption) form one group,
    answered once and scored against every answer of the group; every other row is a group of its own, and so is
    every row whose audio is already decoded (a list of rows read from a `Dataset`). Groups come in the order of
    their first rows.
    """
    groups: dict[object, list[int]] = {}
    for index, (row, clip) in enumerate(zip(without_audio(rows), _clip_identities(rows))):
        prompt = _prompt_identity(row, clip) if row["task"] in CAPTION_TASKS and clip is not None else None
        groups.setdefault((row["task"], prompt) if prompt is not None else index, []).append(index)
    return list(groups.values())


def generate_answers(
    model, processor, rows, batch_size: int = 16, max_new_tokens: int = 32, groups: list[list[int]] | None = None
) -> list[str]:
    """
    Greedy answers for `rows` (a `datasets.Dataset` or list of dicts), one per row, batched, with a progress bar. The
    rows of a `reference_groups` group (one clip's captions) share one generation; pass `groups` when they are
    already computed (they read every clip's path or bytes).
    """
    groups = reference_groups(rows) if groups is None else groups
    generated = _generate(model, processor, rows, [group[0] for group in groups], batch_size, max_new_tokens)
    answers = [""] * len(rows)
    for group, answer in zip(groups, generated):
        for index in group:
            answers[index] = answer
    return answers


@torch.no_grad()
def _generate(model, processor, rows, indices: list[int], batch_size: int, max_new_tokens: int) -> list[str]:
    """Greedy answers for `rows[i]` for each of `indices`, batched."""
    answers = []
    for start in tqdm(range(0, len(indices), batch_size), desc="evaluating", unit="batch"):
        batch = [rows[i] for i in indices[start : start + batch_size]]
        inputs = processor.apply_chat_template(
            [prompt_messages(row) for row in batch],
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            add_generation_prompt=True,
            padding_side="left",  # generation appends after the prompt: right padding would put pads in between
        ).to(model.device)
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, **GREEDY)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        answers.extend(processor.batch_decode(new_tokens, skip_special_tokens=True))
    return answers


def score_predictions(rows, predictions: list[str], groups: list[list[int]] | None = None) -> dict[str, dict]:
    """
    Per-task metrics: accuracy (answer parsed from the generated text among the row's choices, else compared as
    normalised text) and its chance level (`None` without choices) for closed tasks, WER/CER for transcription,
    CIDEr-D / ROUGE-L / METEOR (SPICE / SPIDEr where available) for captions and open QA, each clip's prediction
    (its group's first) scored against all the answers of its `reference_groups` group. Rows of any other task
    (e.g. MMAU's "sound", "music", "speech") are scored as closed tasks and need choices. `count` is the number of
    rows scored, for captions and open QA the number of groups. `groups`: the rows' `reference_groups`, when already
    computed.
    """
    from . import load_metric

    if len(predictions) != len(rows):
        raise ValueError(f"Got {len(rows)} rows but {len(predictions)} predictions: one prediction per row, in order.")
    groups = reference_groups(rows) if groups is None else groups
    rows = list(without_audio(rows))
    unknown = sorted({row["task"] for row in rows if row["task"] not in SCORED_TASKS and not row["choices"]})
    if unknown:
        raise ValueError(
            f"No metric for task(s) {unknown} without choices: the `task` column takes one of {list(SCORED_TASKS)}, "
            "or any name for multiple-choice rows."
        )
    by_task: dict[str, list[list[int]]] = {}
    for group in groups:
        by_task.setdefault(rows[group[0]]["task"], []).append(group)
    results = {}
    for task, task_groups in sorted(by_task.items()):
        task_rows = [rows[group[0]] for group in task_groups]
        task_predictions = [predictions[group[0]] for group in task_groups]
        if task in ASR_TASKS:
            references = [row["transcript"] or row["answer"] for row in task_rows]
            metrics = load_metric("wer").compute(predictions=task_predictions, references=references)
        elif task in CAPTION_TASKS:
            references = [[rows[i]["answer"] for i in group] for group in task_groups]
            metrics = load_metric("caption_metrics").compute(predictions=task_predictions, references=references)
        else:
            metrics = _choice_metrics(task_rows, task_predictions)
        results[task] = {"count": len(task_groups), **metrics}
    return results


def without_audio(rows):
    """The rows without their `audio` column when they are a `datasets.Dataset`, which decodes it on every access."""
    column_names = getattr(rows, "column_names", None) or []
    return rows.remove_columns("audio") if "audio" in column_names else rows


def _choice_metrics(rows: list[dict], predictions: list[str]) -> dict:
    from . import load_metric

    parsed, references = [], []
    for row, prediction in zip(rows, predictions):
        choices = list(row["choices"] or [])
        answer = parse_choice(prediction, choices) if choices else prediction
        parsed.append(normalize_text(answer or ""))
        references.append(normalize_text(row["answer"]))
    with_choices = [1.0 / len(row["choices"]) for row in rows if row["choices"]]
    chance = float(np.mean(with_choices)) if len(with_choices) == len(rows) else None  # open answers: no chance level
    accuracy = load_metric("accuracy").compute(predictions=parsed, references=references)["accuracy"]
    return {"accuracy": accuracy, "chance": chance, "unparsed": sum(not p for p in parsed)}


def markdown_table(results: dict[str, dict], title: str = "") -> str:
    """A Markdown table: one row per task with its count, main metrics and (closed tasks) the chance level."""
    lines = [f"**{title}**", ""] if title else []
    lines += ["| task | n | metric | value | chance |", "|---|---:|---|---:|---:|"]
    for task, metrics in results.items():
        for name, value in metrics.items():
            if name in ("count", "chance", "unparsed"):
                continue
            shown = f"{value:.3f}" if isinstance(value, float) else str(value)
            chance = f"{metrics['chance']:.3f}" if name == "accuracy" and metrics["chance"] is not None else ""
            lines.append(f"| {task} | {metrics['count']} | {name} | {shown} | {chance} |")
    return "\n".join(lines)
