"""The shared byte-level BPE tokenizer (Llama-3 special tokens and chat template) and the small Llama LM."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from tqdm.auto import tqdm
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ._pretrain_common import seeded_generator, train_for_budget, unigram_log_probs, unigram_perplexity

BOS, EOS, PAD, EOT = "<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>", "<|eot_id|>"
START_HEADER, END_HEADER = "<|start_header_id|>", "<|end_header_id|>"
# Llama-3's order of its first special tokens (ids 128000-128013 there, 0-13 here); PAL reuses reserved ones for audio.
SPECIAL_TOKENS = [
    BOS,
    EOS,
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    PAD,
    "<|reserved_special_token_2|>",
    START_HEADER,
    END_HEADER,
    "<|reserved_special_token_3|>",
    EOT,
] + [f"<|reserved_special_token_{index}|>" for index in range(4, 8)]
# Llama-3 layout; content is a string or a list of items, of which only text items are rendered.
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] | trim }}"
    "{%- else %}{%- for item in message['content'] if item['type'] == 'text' %}{{- item['text'] | trim }}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
DESCRIBE_PROMPTS = ["Describe the audio.", "What can you hear?", "Give a short caption of the sound."]
LLM_SIZE = {"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 6, "num_attention_heads": 4}
BLOCK_SIZE, BATCH_SIZE, LEARNING_RATE = 128, 16, 2e-3
MAX_EVAL_BLOCKS = 96


def _message_text(message: dict) -> str:
    """A chat message's text: the string itself, or its text items joined (audio items carry no text)."""
    content = message["content"]
    if isinstance(content, str):
        return content
    return " ".join(item["text"] for item in content if item["type"] == "text" and item["text"])


def tokenizer_corpus(dataset: Dataset) -> Iterator[str]:
    """Every text of a split as it appears in rendered chats (`role\\n\\ntext`), plus captions and transcripts."""
    for row in dataset.select_columns(["messages", "caption", "transcript"]):
        for message in row["messages"]:
            yield f"{message['role']}\n\n{_message_text(message)}"
        yield from (text for text in (row["caption"], row["transcript"]) if text)


def train_tokenizer(dataset: Dataset, vocab_size: int = 4096) -> PreTrainedTokenizerFast:
    """
    Trains a byte-level BPE tokenizer (Llama-3 style) on a split's texts.

    The result has Llama-3's special tokens (bos `<|begin_of_text|>`, eos `<|eot_id|>`, pad
    `<|finetune_right_pad_id|>`, header tokens and `<|reserved_special_token_0..7|>`), prepends bos when encoding,
    and carries a Llama-3 chat template. The vocabulary stops below `vocab_size` when the corpus has no more merges.
    """
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(tokenizer_corpus(dataset), trainer)
    backend.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, SPECIAL_TOKENS.index(BOS))]
            ),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=BOS, eos_token=EOT, pad_token=PAD, chat_template=CHAT_TEMPLATE
    )


def documents(dataset: Dataset, tokenizer: PreTrainedTokenizerFast, seed: int) -> list[str]:
    """
    The LM's training texts for a split, per row: its own chat (question → answer), a two-turn chat (describe →
    caption, then question → answer), and the caption and transcript as plain text.
    """
    rng = seeded_generator(seed, 1)
    texts = []
    for row in dataset.select_columns(["messages", "question", "answer", "caption", "transcript"]):
        texts.append(tokenizer.apply_chat_template(row["messages"], tokenize=False))
        if row["caption"]:
            describe = DESCRIBE_PROMPTS[rng.integers(len(DESCRIBE_PROMPTS))]
            turns = [describe, row["caption"], row["question"], row["answer"]]
            chat = [{"role": ("user", "assistant")[i % 2], "content": text} for i, text in enumerate(turns)]
            texts.append(tokenizer.apply_chat_template(chat, tokenize=False))
        texts.extend(f"{BOS}{text}{EOS}" for text in (row["caption"], row["transcript"]) if text)
    return texts


def token_stream(texts: list[str], tokenizer: PreTrainedTokenizerFast) -> np.ndarray:
    """The texts' token ids, concatenated (the texts already hold their special tokens)."""
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return np.fromiter((token for text in ids for token in text), dtype=np.int64)


def llm_config(tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    """A small Llama-3.2-shaped config (GQA, tied embeddings, rope theta 500000) for `tokenizer`."""
    return LlamaConfig(
        vocab_size=len(tokenizer),
        num_key_value_heads=LLM_SIZE["num_attention_heads"] // 2,
        max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(EOS)],
        pad_token_id=tokenizer.pad_token_id,
        **LLM_SIZE,
    )


@torch.no_grad()
def held_out_loss(model: LlamaForCausalLM, blocks: torch.Tensor) -> float:
    """Mean next-token cross-entropy over `(N, BLOCK_SIZE + 1)` token blocks."""
    model.eval()
    losses = [model(input_ids=batch, labels=batch).loss.item() for batch in blocks.split(BATCH_SIZE)]
    return float(np.mean(losses))


@torch.no_grad()
def sample_answers(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, dataset: Dataset, count: int = 3):
    """Greedy answers to the first `count` questions of `dataset` (no audio), with their references."""
    samples = []
    for row in dataset.select(range(min(count, len(dataset)))):
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": row["question"]}], add_generation_prompt=True, return_tensors="pt"
        )
        input_ids = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
        output = model.generate(input_ids=input_ids, max_new_tokens=24, do_sample=False)
        answer = tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True)
        samples.append({"question": row["question"], "reference": row["answer"], "generated": answer})
    return samples


def train_llm(
    train: Dataset,
    held_out: Dataset,
    tokenizer: PreTrainedTokenizerFast,
    out_dir: str | Path,
    *,
    budget_seconds: float,
    seed: int,
    max_steps: int | None = None,
) -> dict:
    """
    Trains the small Llama on PAL-Synth texts as a causal LM and saves it with `tokenizer` to `out_dir`.

    Returns:
        Held-out perplexity of the trained and untrained model and of a unigram model on the same tokens, the
        step count, and sample answers.
    """
    torch.manual_seed(seed)
    train_ids = token_stream(documents(train, tokenizer, seed), tokenizer)
    eval_ids = token_stream(documents(held_out, tokenizer, seed), tokenizer)
    num_blocks = min(MAX_EVAL_BLOCKS, len(eval_ids) // (BLOCK_SIZE + 1))
    eval_blocks = torch.from_numpy(eval_ids[: num_blocks * (BLOCK_SIZE + 1)]).view(num_blocks, BLOCK_SIZE + 1)
    model = LlamaForCausalLM(llm_config(tokenizer))

    def next_batch(step: int) -> dict:
        starts = seeded_generator(seed, 2, step).integers(0, len(train_ids) - BLOCK_SIZE - 1, size=BATCH_SIZE)
        batch = torch.from_numpy(np.stack([train_ids[start : start + BLOCK_SIZE + 1] for start in starts]))
        return {"input_ids": batch, "labels": batch}

    untrained = held_out_loss(model, eval_blocks)
    stats = train_for_budget(
        model, next_batch, budget_seconds=budget_seconds, max_steps=max_steps, learning_rate=LEARNING_RATE, desc="LLM"
    )
    log_probs = unigram_log_probs([train_ids], len(tokenizer))
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=model.config.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    metrics = {
        "held_out_perplexity": float(np.exp(held_out_loss(model, eval_blocks))),
        "untrained_perplexity": float(np.exp(untrained)),
        "unigram_perplexity": unigram_perplexity(log_probs, [eval_blocks[:, 1:].flatten().tolist()]),
        "held_out_tokens": int(eval_blocks[:, 1:].numel()),
        "vocab_size": len(tokenizer),
        "parameters": model.num_parameters(),
        **stats,
        "samples": sample_answers(model, tokenizer, held_out),
    }
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    tqdm.write(
        f"LLM: held-out perplexity {metrics['held_out_perplexity']:.2f} (untrained {metrics['untrained_perplexity']:.1f},"
        f" unigram {metrics['unigram_perplexity']:.1f}) after {stats['steps']} steps"
    )
    return metrics
