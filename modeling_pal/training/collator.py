"""`PalDataCollator`: chat rows with audio → PAL model inputs with labels on the assistant answers only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from datasets import Dataset
from tqdm.auto import tqdm
from transformers.utils import logging

from ..processing_pal import PalProcessor

logger = logging.get_logger(__name__)

IGNORE_INDEX = -100
AUDIO_SOURCE_KEYS = ("audio", "path", "url", "array")


@dataclass
class PreparedRow:
    """One row as the collator sees it: the rendered chat, its clips, the answers' character spans and its id."""

    text: str
    clips: list
    answer_spans: list[tuple[int, int]]
    row_id: object = None


def _own_clip(item: Mapping):
    """An audio item's own clip (`audio`, `path`, `url` or `array`), or `None`."""
    return next((item[key] for key in AUDIO_SOURCE_KEYS if item.get(key) is not None), None)


def _row_clip(row_audio, taken: int):
    """The clip of the row's `audio` column for its `taken`-th audio item without a value of its own."""
    if isinstance(row_audio, (list, tuple)) and taken < len(row_audio):
        return row_audio[taken]
    if row_audio is None or isinstance(row_audio, (list, tuple)) or taken > 0:
        raise ValueError("An audio item has no value, and the row's `audio` column has no clip left for it")
    return row_audio


def normalize_messages(messages: Sequence[Mapping], row_audio=None) -> tuple[list[dict], list]:
    """
    Strips a chat to what the chat template needs and collects its clips in order.

    Content items are dispatched on `type` (rows that went through `datasets` carry every content key, `None` where
    missing): text items keep their text, audio items become `{"type": "audio"}` and their clip is taken from the item
    or from the row's `audio` column.

    Returns:
        `(messages, clips)`.
    """
    normalized, clips = [], []
    taken = 0
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            normalized.append({"role": message["role"], "content": content})
            continue
        items = []
        for item in content:
            if item["type"] == "text":
                items.append({"type": "text", "text": item["text"]})
            elif item["type"] == "audio":
                clip = _own_clip(item)
                if clip is None:
                    clip, taken = _row_clip(row_audio, taken), taken + 1
                clips.append(clip)
                items.append({"type": "audio"})
            else:
                raise ValueError(f"PAL chats take text and audio items, got a {item['type']!r} item")
        normalized.append({"role": message["role"], "content": items})
    return normalized, clips


def _align(plain: list[int], expanded: list[int], inserted: set[int], audio_token_id: int) -> list[int | None]:
    """
    For each position of the processor's expanded ids, the position in the plain tokenization it copies, or `None`
    for tokens the audio expansion inserted (placeholders, markers). A plain audio token may also vanish (PLITS-only
    models keep no marker).
    """
    source, i = [], 0
    for token in expanded:
        while i < len(plain) and plain[i] != token and plain[i] == audio_token_id and token not in inserted:
            i += 1
        if i < len(plain) and plain[i] == token:
            source.append(i)
            i += 1
        elif token in inserted:
            source.append(None)
        else:
            raise ValueError(f"Cannot align the processor's tokens with the chat's (token {token} at {len(source)})")
    if any(token != audio_token_id for token in plain[i:]):
        raise ValueError("Cannot align the processor's tokens with the chat's: tokens are missing")
    return source


@dataclass
class PalDataCollator:
    """
    Batches chat rows for training: model inputs from a `PalProcessor` plus `labels` that are -100 everywhere except on
    the answer tokens of every assistant turn (each turn's end-of-turn token included, role headers excluded).

    Rows hold `messages` (a chat whose `{"type": "audio"}` items carry an array, list, path, URL, dict or `datasets`
    `AudioDecoder`, or nothing: then the row's `audio` column is used, its k-th entry for the k-th such item when it is
    a list); text-only rows are fine. Answer spans come from rendering each chat prefix with the chat template, so
    stock templates (without generation markers) work.

    Rows longer than `max_length` lose the tail of their last answer. A row whose prompt and audio alone reach
    `max_length` is skipped, logged and counted in `num_skipped` (per process: each dataloader worker counts its own);
    audio placeholders are never split; a batch whose rows are all skipped raises a `ValueError`, which
    `drop_long_rows` (a pass over the dataset before training) rules out. A row's `id`, when present, is passed
    through as `row_ids` for logging;
    trainers must pop it before the forward (`PalTrainer` does).

    Args:
        processor: the model's `PalProcessor`.
        max_length: the longest tokenized row (after audio expansion), or `None` for no limit.
    """

    processor: PalProcessor
    max_length: int | None = None
    num_skipped: int = field(default=0, init=False)

    def prepare(self, row: Mapping) -> PreparedRow:
        """Normalizes one row's chat, renders it and finds the character span of every assistant answer."""
        if "messages" not in row:
            raise ValueError(
                f"A row needs a `messages` column (its chat), got the columns {sorted(row)}; with `Trainer`, set "
                "`remove_unused_columns=False` so that it passes the raw `messages` and `audio` columns"
            )
        row_audio = row.get("audio")
        messages, clips = normalize_messages(row["messages"], row_audio)
        if not clips and row_audio is not None and not (isinstance(row_audio, (list, tuple)) and not row_audio):
            raise ValueError(
                f"Row {row.get('id', '')!r} has audio in its `audio` column but no {{'type': 'audio'}} item in its "
                "chat, so the audio would not reach the model; put one where each clip belongs"
            )
        text = self._render(messages)
        spans = []
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prefix = self._render(messages[:index], add_generation_prompt=True)
            through = self._render(messages[: index + 1])
            if not (text.startswith(through) and through.startswith(prefix)):
                raise ValueError(f"The chat template does not render turn {index} as a prefix of the whole chat")
            spans.append((len(prefix), len(through.rstrip())))
        return PreparedRow(text, clips, spans, row.get("id"))

    def _render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        return self.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def _add_special_tokens(self, texts: list[str]) -> bool:
        """Like `ProcessorMixin.apply_chat_template`: no extra special tokens when the template wrote bos already."""
        bos = self.processor.tokenizer.bos_token
        return not (bos is not None and texts[0].startswith(bos))

    def _plain_labels(self, row: PreparedRow, add_special_tokens: bool) -> tuple[list[int], list[int]]:
        """The chat's ids without audio expansion and their labels (tokens that overlap an answer span)."""
        encoded = self.processor.tokenizer(
            row.text, add_special_tokens=add_special_tokens, return_offsets_mapping=True
        )
        labels = [
            token if any(begin < span_end and end > span_start for span_start, span_end in row.answer_spans) else -100
            for token, (begin, end) in zip(encoded["input_ids"], encoded["offset_mapping"])
        ]
        return encoded["input_ids"], labels

    @property
    def audio_ids(self) -> set[int]:
        """The audio marker and PLITS placeholder ids: never labelled, never cut."""
        return {self.processor.audio_token_id, self.processor.audio_placeholder_token_id}

    def _row_labels(self, row: PreparedRow, ids: list[int], add_special_tokens: bool) -> list[int]:
        """Labels for a row's expanded ids: the plain tokenization's labels, -100 on audio tokens."""
        plain, plain_labels = self._plain_labels(row, add_special_tokens)
        sources = _align(plain, ids, self.audio_ids, self.processor.audio_token_id)
        return [
            IGNORE_INDEX if source is None or ids[position] in self.audio_ids else plain_labels[source]
            for position, source in enumerate(sources)
        ]

    def _keep_length(self, ids: list[int], labels: list[int]) -> int | None:
        """How many tokens of a row to keep (`None`: skip the row); only the last answer's tail is cut."""
        if self.max_length is None or len(ids) <= self.max_length:
            return len(ids)
        answer = [position for position, label in enumerate(labels) if label != IGNORE_INDEX]
        if not answer:
            return None
        last_start = answer[-1]
        while last_start > 0 and labels[last_start - 1] != IGNORE_INDEX:
            last_start -= 1
        if last_start >= self.max_length or self.audio_ids.intersection(ids[self.max_length :]):
            return None
        return self.max_length

    def _process(self, prepared: list[PreparedRow], add_special_tokens: bool) -> dict:
        """The processor's right-padded model inputs for prepared rows (audio expanded)."""
        batch = self.processor(
            text=[row.text for row in prepared],
            audio=[row.clips for row in prepared] if any(row.clips for row in prepared) else None,
            padding=True,
            padding_side="right",
            add_special_tokens=add_special_tokens,
            return_tensors="pt",
        )
        return dict(batch)

    def fits(self, row: Mapping) -> bool:
        """Whether the collator keeps `row`: its prompt and audio stay under `max_length` (a cut answer tail is fine)."""
        if self.max_length is None:
            return True
        prepared = self.prepare(row)
        add_special_tokens = self._add_special_tokens([prepared.text])
        ids = self._process([prepared], add_special_tokens)["input_ids"][0].tolist()
        return self._keep_length(ids, self._row_labels(prepared, ids, add_special_tokens)) is not None

    def drop_long_rows(self, dataset: Dataset) -> Dataset:
        """
        A `datasets.Dataset` without the rows the collator would skip (counted in `num_skipped` and logged), so that
        every batch a trainer draws holds only rows that train. One pass of the collator (audio featurisation
        included) over the rows, ~10 ms each on a CPU core; other datasets (and `max_length=None`) are returned as they
        are.
        """
        if self.max_length is None or not isinstance(dataset, Dataset):
            return dataset
        kept, skipped = [], []
        for index, row in enumerate(tqdm(dataset, desc=f"Rows under max_length={self.max_length}")):
            if self.fits(row):
                kept.append(index)
            else:
                skipped.append(row.get("id", f"#{index}"))
        if skipped:
            self._log_skipped(skipped)
        return dataset.select(kept)

    def __call__(self, rows: list[Mapping]) -> dict:
        prepared = [self.prepare(row) for row in rows]
        add_special_tokens = self._add_special_tokens([row.text for row in prepared])
        batch = self._process(prepared, add_special_tokens)
        lengths = batch["attention_mask"].sum(-1).tolist()
        labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)
        kept = []
        for index, (row, length) in enumerate(zip(prepared, lengths)):
            ids = batch["input_ids"][index, :length].tolist()
            row_labels = self._row_labels(row, ids, add_special_tokens)
            keep = self._keep_length(ids, row_labels)
            if keep is None:
                continue
            kept.append(index)
            labels[index, :keep] = torch.tensor(row_labels[:keep])
            batch["attention_mask"][index, keep:] = 0
            batch["input_ids"][index, keep:] = self.processor.tokenizer.pad_token_id
        return self._select(batch, labels, kept, prepared)

    def _log_skipped(self, skipped: list) -> None:
        """Counts and logs rows (by id) whose prompt and audio reach `max_length`."""
        self.num_skipped += len(skipped)
        logger.warning(
            f"Skipped {len(skipped)} row(s) whose prompt and audio exceed max_length={self.max_length}: "
            f"{skipped} ({self.num_skipped} so far)"
        )

    def _select(self, batch: dict, labels: torch.Tensor, kept: list[int], prepared: list[PreparedRow]) -> dict:
        """Drops skipped rows (logging them) and the padding columns no kept row needs."""
        skipped = [
            f"#{index}" if row.row_id is None else row.row_id
            for index, row in enumerate(prepared)
            if index not in kept
        ]
        if skipped:
            self._log_skipped(skipped)
        if not kept:
            raise ValueError(
                f"Every row of the batch exceeds max_length={self.max_length}; drop such rows before batching "
                "with `collator.drop_long_rows(dataset)`, or raise max_length"
            )
        width = int(batch["attention_mask"][kept].sum(-1).max())
        rows = torch.tensor(kept)
        out = {name: value[rows] for name, value in batch.items()}
        out.update(input_ids=out["input_ids"][:, :width], attention_mask=out["attention_mask"][:, :width])
        out["labels"] = labels[rows, :width]
        if all(row.row_id is not None for row in prepared):
            out["row_ids"] = [prepared[index].row_id for index in kept]
        return out
