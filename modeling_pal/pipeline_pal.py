"""The "audio-text-to-text" pipeline: chats or prompts with audio in, generated text out.

This file imports only `transformers` and `torch`: `save_pretrained` copies it next to checkpoints, so that
`pipeline(model=checkpoint, trust_remote_code=True)` serves PAL without the package installed.
"""

from collections.abc import Sized

from torch.utils.data import DataLoader
from transformers.pipelines import AnyToAnyPipeline
from transformers.pipelines.any_to_any import Chat
from transformers.pipelines.pt_utils import PipelineDataset, PipelineIterator

PIPELINE_TASK = "audio-text-to-text"
# Shipped in checkpoints as `config.custom_pipelines`; `PalConfig.custom_pipelines` hides it once the task is
# registered in-process (`import modeling_pal`), so both loading paths serve PAL.
CUSTOM_PIPELINES = {
    PIPELINE_TASK: {
        "impl": "pipeline_pal.AudioTextToTextPipeline",
        "pt": ["AutoModelForMultimodalLM"],
        "type": "multimodal",
    }
}


class AudioTextToTextPipeline(AnyToAnyPipeline):
    """
    Generates text from audio and text with a PAL model (any `AutoModelForMultimodalLM` with a processor that takes
    `audio`). Inputs are chats whose user turns hold `{"type": "audio", "audio" | "path" | "url": ...}` items, or
    `text=` prompts with one `processor.audio_token` per clip plus `audio=` clips (arrays, paths, URLs; a list per
    batch). Files are decoded at their own rate and resampled by the processor; arrays are taken at
    `processor.sampling_rate` unless `sampling_rate=` is given. With `batch_size > 1`, the processor's `collate`
    lays out each batch, so batched and one-by-one generation agree.

    Example:

    ```python
    >>> import modeling_pal  # registers the task
    >>> from transformers import pipeline

    >>> pipe = pipeline("audio-text-to-text", model="path/to/pal-checkpoint")
    >>> chat = [{"role": "user", "content": [{"type": "audio", "path": "dog.wav"},
    ...                                      {"type": "text", "text": "What do you hear?"}]}]
    >>> pipe(text=chat, max_new_tokens=32, return_full_text=False)
    [{'input_text': [...], 'generated_text': '...'}]
    ```
    """

    def __call__(self, text=None, images=None, videos=None, audio=None, **kwargs):
        """
        As `AnyToAnyPipeline.__call__`, and: a `datasets.Dataset` of `{"text", "audio"}` rows runs row by row (its
        outputs come as an iterator), an empty list gives `[]`, and `audio=` beside chats (which Transformers drops)
        raises a `ValueError`.
        """
        if isinstance(text, (list, tuple)) and not text:
            return []
        if hasattr(text, "column_names"):  # a datasets.Dataset, which Transformers would take for one input
            text = (row for row in text)
        if audio is not None and _holds_chats(text):
            raise ValueError(
                'audio= goes with text prompts; a chat holds its clips as {"type": "audio", "audio": ...} items of '
                "its messages"
            )
        return super().__call__(text=text, images=images, videos=videos, audio=audio, **kwargs)

    def preprocess(self, inputs=None, timeout=None, continue_final_message=None, **processing_kwargs):
        """
        Prompts (dicts) go to the processor as they are, so files are decoded at their own rate, and one that is
        itself a batch is left-padded for generation whatever the tokenizer's side; chats go to `apply_chat_template`.
        """
        if not isinstance(inputs, (str, list, tuple, dict, Chat)):
            raise ValueError(
                "The pipeline takes a prompt, a chat or a dict with 'text' (and 'audio'), or a list, generator or "
                f"dataset of them; got {type(inputs).__name__}"
            )
        if not isinstance(inputs, dict):
            return super().preprocess(
                inputs, timeout=timeout, continue_final_message=continue_final_message, **processing_kwargs
            )
        processor_kwargs = processing_kwargs.pop("processor_kwargs", None) or processing_kwargs
        media = {name: inputs.get(name) for name in ("audio", "images", "videos")}  # PAL's processor refuses images
        processor_kwargs = {"padding": True, **processor_kwargs, "padding_side": "left", "return_tensors": "pt"}
        model_inputs = self.processor(text=inputs.get("text"), **media, **processor_kwargs).to(dtype=self.dtype)
        model_inputs["text"] = inputs.get("text")
        return model_inputs

    def get_iterator(
        self, inputs, num_workers: int, batch_size: int, preprocess_params, forward_params, postprocess_params
    ):
        """
        Batches with the processor's `collate` where it has one: Transformers' generic collate pads every input
        alike, and cannot pad audio windows (clip index -1) nor merge prompts with and without audio.
        """
        if batch_size == 1 or not hasattr(self.processor, "collate"):
            return super().get_iterator(
                inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params
            )
        if isinstance(inputs, Sized):
            dataset = PipelineDataset(inputs, self.preprocess, preprocess_params)
        else:
            dataset = PipelineIterator(inputs, self.preprocess, preprocess_params)
            num_workers = min(num_workers, 1)  # as Transformers does: several workers would each run through it
        loader = DataLoader(dataset, num_workers=num_workers, batch_size=batch_size, collate_fn=self._collate)
        model_iterator = PipelineIterator(loader, self.forward, forward_params, loader_batch_size=batch_size)
        return PipelineIterator(model_iterator, self.postprocess, postprocess_params)

    def _collate(self, items: list[dict]) -> dict:
        """
        Preprocessed prompts → one batch, left-padded for generation whatever the tokenizer's side; their `text`
        (prompt or chat, for the outputs) stays a list.
        """
        if any(len(item["input_ids"]) != 1 for item in items):
            raise ValueError(
                "With batch_size > 1 every input must be one prompt; an input that is itself a batch (`text=[...]` "
                "inside a dict) goes with batch_size=1, or pass its prompts as separate inputs"
            )
        batch = self.processor.collate(
            [{name: value for name, value in item.items() if name != "text"} for item in items], padding_side="left"
        )
        batch["text"] = [item["text"] for item in items]
        return batch

    def save_pretrained(self, save_directory, **kwargs):
        """Saves the model (which ships this file for remote-code users) and the whole processor."""
        self.model.save_pretrained(save_directory, **kwargs)
        self.processor.save_pretrained(save_directory, **kwargs)


def _holds_chats(text) -> bool:
    """Whether `text` is one chat (a list of messages) or a list of chats, as `AnyToAnyPipeline` tells them apart."""
    first = text[0] if isinstance(text, (list, tuple)) and text else None
    if isinstance(first, (list, tuple)) and first:
        first = first[0]
    return isinstance(first, dict) and "role" in first


__all__ = ["AudioTextToTextPipeline", "CUSTOM_PIPELINES", "PIPELINE_TASK"]
