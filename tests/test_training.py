"""Training: the chat collator's labels, trainable groups, Trainer / SFTTrainer + LoRA, DDP, resume, the recipes."""

import dataclasses
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml
from datasets import load_from_disk
from peft import PeftModel
from safetensors.torch import load_file
from transformers import LlamaForCausalLM, TrainerCallback, TrainingArguments

from modeling_pal import PalForConditionalGeneration
from modeling_pal.data.synth import build_pal_synth
from modeling_pal.processing_pal import PalProcessor
from modeling_pal.training import PalDataCollator, PalTrainer, in_group, load_recipe, run_curriculum, set_trainable
from modeling_pal.training.curriculum import _all_training_args

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tests" / "scripts" / "curriculum_run.py"
DOCS = REPO / "docs" / "training.md"
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, especially on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("synth")
    build_pal_synth(24, seed=0).save_to_disk(str(out))
    return str(out)


@pytest.fixture(scope="module")
def synth(synth_dir):
    return load_from_disk(synth_dir)["train"]


def fresh_model(llm_dir: str, whisper_dir: str) -> tuple[PalForConditionalGeneration, PalProcessor]:
    """A hybrid PAL (Q-Former summaries via PLITS and full Whisper tokens via LAL) and its processor."""
    torch.manual_seed(0)
    encoders = {"whisper": whisper_dir}
    model = PalForConditionalGeneration.from_components(
        llm_dir, encoders, integration="hybrid", lal_start_layer=2, num_summary_tokens=4
    )
    return model, PalProcessor.from_components(llm_dir, encoders, model.config)


def tiny_recipe(llm_dir: str, whisper_dir: str, stages: list[dict], **training) -> dict:
    return {
        "seed": 0,
        "model": {
            "text_model": llm_dir,
            "audio_encoders": {"whisper": whisper_dir},
            "integration": "hybrid",
            "config": {"lal_start_layer": 2, "num_summary_tokens": 4},
        },
        "training": {
            "per_device_train_batch_size": 2,
            "learning_rate": 1e-3,
            "lr_scheduler_type": "constant",
            "logging_steps": 1,
            "save_strategy": "no",
            "disable_tqdm": True,
            **training,
        },
        "stages": stages,
    }


def train(model, processor, rows, steps: int, output_dir, callbacks=(), **args) -> list[float]:
    """`steps` optimizer steps of `PalTrainer`; returns the logged losses."""
    trainer = make_trainer(model, processor, rows, steps, output_dir, callbacks=list(callbacks), **args)
    trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def make_trainer(model, processor, rows, steps: int, output_dir, collator=None, sample_log=None, callbacks=(), **args):
    """A `PalTrainer` for `steps` optimizer steps on CPU (`args`: `TrainingArguments` over the defaults)."""
    defaults = dict(per_device_train_batch_size=2, learning_rate=1e-3, lr_scheduler_type="constant")
    arguments = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=steps,
        logging_steps=1,
        save_strategy="no",
        remove_unused_columns=False,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        **{**defaults, **args},
    )
    return PalTrainer(
        model=model,
        args=arguments,
        train_dataset=rows,
        data_collator=collator or PalDataCollator(processor),
        processing_class=processor,
        callbacks=list(callbacks),
        sample_log=sample_log,
    )


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.named_parameters()}


def changed(before: dict, model) -> dict[str, bool]:
    return {name: not torch.equal(before[name], value) for name, value in model.named_parameters()}


def label_runs(labels: torch.Tensor) -> list[list[int]]:
    """Maximal runs of positions that carry a label."""
    runs, current = [], []
    for token in labels.tolist() + [-100]:
        if token != -100:
            current.append(token)
        elif current:
            runs, current = runs + [current], []
    return runs


def user(*items) -> dict:
    return {"role": "user", "content": list(items)}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def text(value: str) -> dict:
    return {"type": "text", "text": value}


# ----------------------------------------------------------------------------------------------------------------------
# PalDataCollator
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("family", "integration"), [("llama", "plits"), ("qwen2", "hybrid")])
def test_labels_are_exactly_the_answers(
    family, integration, pal_model, tiny_llm_dir, tiny_whisper_dir, synth, tmp_path
):
    model = pal_model(family, integration)
    processor = PalProcessor.from_components(tiny_llm_dir(family), {"whisper": tiny_whisper_dir}, model.config)
    wave = np.sin(np.linspace(0, 400, 16000)).astype(np.float32)
    soundfile.write(tmp_path / "clip.wav", wave, 16000)
    dataset_row = synth[0]  # via `datasets`: an AudioDecoder column, audio items with every key None but `type`
    rows = [
        {
            "id": "single",
            "messages": [user({"type": "audio", "audio": wave}, text("what is it?")), assistant("a dog")],
        },
        {
            "id": "multi",
            "audio": [wave, {"array": wave[:8000], "sampling_rate": 16000}],
            "messages": [
                user({"type": "audio", "audio": None, "text": None}, text("what?")),
                assistant("a chirp"),
                user({"type": "audio", "path": str(tmp_path / "clip.wav")}, text("and this?")),
                assistant("noise then a click"),
                user({"type": "audio", "text": None}, text("last?")),
                assistant("silence"),
            ],
        },
        {"id": "text-only", "messages": [user(text("hello")), assistant("hi there")]},
        dataset_row,
    ]
    batch = PalDataCollator(processor)(rows)
    assert batch["row_ids"] == ["single", "multi", "text-only", dataset_row["id"]]
    tokenizer = processor.tokenizer
    answers = [["a dog"], ["a chirp", "noise then a click", "silence"], ["hi there"], [dataset_row["answer"]]]
    for labels, expected in zip(batch["labels"], answers):
        decoded = [tokenizer.decode(run) for run in label_runs(labels)]
        # the tiny tokenizer drops characters it never saw, so compare with the answer's own round trip
        round_trip = [
            tokenizer.decode(tokenizer(answer + tokenizer.eos_token, add_special_tokens=False).input_ids)
            for answer in expected
        ]
        assert decoded == round_trip and all(text.endswith(tokenizer.eos_token) for text in decoded)
    audio_positions = torch.isin(batch["input_ids"], torch.tensor(processor.audio_token_ids))
    assert audio_positions.any() and (batch["labels"][audio_positions] == -100).all()
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    with torch.no_grad():
        assert torch.isfinite(model(**{k: v for k, v in batch.items() if k != "row_ids"}).loss)


def test_a_clip_the_chat_never_places_is_refused(pal_model, tiny_llm_dir, tiny_whisper_dir):
    model = pal_model("llama", "plits")
    processor = PalProcessor.from_components(tiny_llm_dir("llama"), {"whisper": tiny_whisper_dir}, model.config)
    wave = np.zeros(16000, dtype=np.float32)
    row = {"audio": wave, "messages": [{"role": "user", "content": "What is it?"}, assistant("a dog")]}
    with pytest.raises(ValueError, match=r"no \{'type': 'audio'\} item"):
        PalDataCollator(processor)([row])  # the clip would silently not reach the model
    assert "audio_features_0" not in PalDataCollator(processor)([{**row, "audio": None}])  # a text-only row


def test_trainer_dropping_the_chat_columns_gets_a_clear_error(
    pal_model, tiny_llm_dir, tiny_whisper_dir, synth, tmp_path
):
    model = pal_model("llama", "plits")
    processor = PalProcessor.from_components(tiny_llm_dir("llama"), {"whisper": tiny_whisper_dir}, model.config)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, report_to="none", use_cpu=True)  # drops columns
    trainer = PalTrainer(model=model, args=args, train_dataset=synth, data_collator=PalDataCollator(processor))
    with pytest.raises(ValueError, match="remove_unused_columns=False"):
        next(iter(trainer.get_train_dataloader()))


def test_long_rows_lose_their_answer_tail_or_are_skipped(pal_model, tiny_llm_dir, tiny_whisper_dir, synth):
    model = pal_model("llama", "plits")
    processor = PalProcessor.from_components(tiny_llm_dir("llama"), {"whisper": tiny_whisper_dir}, model.config)
    row, short = synth[0], {"id": "short", "messages": [user(text("hi")), assistant("yes")]}
    full = PalDataCollator(processor)([row])
    length, answer = full["input_ids"].shape[1], full["labels"][0][full["labels"][0] != -100]

    cut = PalDataCollator(processor, max_length=length - 2)([row])
    assert cut["input_ids"].shape[1] == length - 2
    assert cut["labels"][0][cut["labels"][0] != -100].tolist() == answer.tolist()[:-2]

    collator = PalDataCollator(processor, max_length=length - len(answer))  # the prompt and audio fill it
    batch = collator([row, short])
    assert batch["row_ids"] == ["short"] and collator.num_skipped == 1
    assert batch["input_ids"].shape[0] == 1 and batch["audio_features_0"].shape[0] == 1
    with pytest.raises(ValueError, match="exceeds max_length"):
        collator([row])


def test_drop_long_rows_spares_the_trainer_empty_batches(tiny_llm_dir, tiny_whisper_dir, synth, tmp_path):
    model, processor = fresh_model(tiny_llm_dir("llama"), tiny_whisper_dir)
    set_trainable(model, ["connectors"])
    rows = synth.select(range(8))
    full = PalDataCollator(processor)
    prompts = [int((full([row])["labels"][0] != -100).nonzero()[0]) for row in rows]
    max_length = sorted(prompts)[4]  # a row is skipped when its prompt and audio reach max_length
    long_ids = {row["id"] for row, prompt in zip(rows, prompts) if prompt >= max_length}
    collator = PalDataCollator(processor, max_length=max_length)
    trainer = make_trainer(
        model,
        processor,
        collator.drop_long_rows(rows),
        2,
        tmp_path,
        collator=collator,
        sample_log=tmp_path / "ids.jsonl",
        per_device_train_batch_size=1,
        gradient_accumulation_steps=2,
    )
    trainer.train()
    assert 0 < len(long_ids) < len(rows) and collator.num_skipped == len(long_ids)
    records = [json.loads(line) for line in (tmp_path / "ids.jsonl").read_text().splitlines()]
    assert trainer.state.global_step == 2 and [record["step"] for record in records] == [1, 1, 2, 2]
    trained = [row for record in records for row in record["ids"]]
    assert sorted(trained) == sorted(set(rows["id"]) - long_ids)  # one epoch of the rows that fit


# ----------------------------------------------------------------------------------------------------------------------
# set_trainable: what a stage changes
# ----------------------------------------------------------------------------------------------------------------------


def test_stage1_step_changes_connectors_only(tiny_llm_dir, tiny_whisper_dir, synth, tmp_path):
    model, processor = fresh_model(tiny_llm_dir("llama"), tiny_whisper_dir)
    counts = set_trainable(model, ["connectors"])
    connector_names = [name for name, _ in model.named_parameters() if in_group("connectors", name)]
    assert connector_names and all(".plits_projectors." in n or ".lal_projectors." in n for n in connector_names)
    assert counts == {"connectors": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    before = snapshot(model)
    train(model, processor, synth.select(range(2)), 1, tmp_path, weight_decay=0.1)
    diff = changed(before, model)
    assert all(diff[name] for name in connector_names)
    assert not any(diff[name] for name in diff if name not in connector_names)  # LLM and encoders bitwise equal

    counts = set_trainable(model, ["connectors", "llm_attention"])
    assert set(counts) == {"connectors", "llm_attention"}
    before = snapshot(model)
    train(model, processor, synth.select(range(2, 4)), 1, tmp_path)
    diff = changed(before, model)
    ffn = [name for name in diff if ".mlp." in name]
    attention = [name for name in diff if re.search(r"language_model.*self_attn\.[qkvo]_proj\.weight", name)]
    assert ffn and not any(diff[name] for name in ffn)
    assert attention and all(diff[name] for name in attention), [name for name in attention if not diff[name]]
    assert not any(diff[name] for name in diff if name.startswith("model.audio_towers."))


def test_added_token_rows_train_alone(tiny_llm_dir, tiny_whisper_dir, synth, tmp_path):
    model, processor = fresh_model(tiny_llm_dir("qwen2"), tiny_whisper_dir)  # ChatML vocabulary: PAL adds tokens
    new_rows = [model.config.audio_token_id, model.config.audio_placeholder_token_id]
    counts = set_trainable(model, "connectors")
    hidden = model.config.text_config.hidden_size
    projectors = sum(p.numel() for n, p in model.named_parameters() if "_projectors." in n)
    assert counts == {"connectors": projectors + 2 * len(new_rows) * hidden}  # embedding and untied lm_head rows
    before = snapshot(model)
    train(model, processor, synth.select(range(2)), 1, tmp_path, weight_decay=0.1)
    embed, head = "model.language_model.embed_tokens.weight", "lm_head.weight"
    for name in (embed, head):
        other = torch.ones(before[name].shape[0], dtype=torch.bool)
        other[new_rows] = False
        after = dict(model.named_parameters())[name].detach()
        assert torch.equal(after[other], before[name][other])
    assert not torch.equal(model.lm_head.weight[new_rows], before[head][new_rows])
    marker = model.config.audio_token_id
    assert not torch.equal(model.get_input_embeddings().weight[marker], before[embed][marker])
    set_trainable(model, ["llm"])  # switching stages removes the row masks
    assert not model._pal_row_masks and model.lm_head.weight.requires_grad


# ----------------------------------------------------------------------------------------------------------------------
# Trainer and TRL
# ----------------------------------------------------------------------------------------------------------------------


class StopWhenHalved(TrainerCallback):
    def __init__(self):
        self.losses = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(logs["loss"])
            control.should_training_stop = logs["loss"] <= self.losses[0] / 2


def test_trainer_overfits_a_few_clips(tiny_llm_dir, tiny_whisper_dir, synth, tmp_path):
    model, processor = fresh_model(tiny_llm_dir("llama"), tiny_whisper_dir)
    set_trainable(model, ["connectors", "llm"])
    stopper = StopWhenHalved()
    losses = train(
        model,
        processor,
        synth.select(range(4)),
        50,
        tmp_path,
        [stopper],
        per_device_train_batch_size=4,
        learning_rate=3e-3,
    )
    assert len(losses) <= 50 and losses[-1] <= losses[0] / 2, losses


def test_sft_trainer_lora_trains_adapters_and_connectors(tiny_llm_dir, tiny_whisper_dir, synth, tmp_path):
    recipe = tiny_recipe(
        tiny_llm_dir("llama"),
        tiny_whisper_dir,
        [{"name": "lora", "train": ["connectors", "llm"], "args": {"max_steps": 8}}],
        per_device_train_batch_size=4,
        learning_rate=3e-3,
    )
    recipe["lora"] = {"r": 4, "lora_alpha": 8}
    result = run_curriculum(recipe, tmp_path, trainer="trl", lora=True, data=synth.select(range(4)))
    model = result.model
    assert isinstance(model, PeftModel)
    losses = [entry["loss"] for entry in result.stages[0].log_history if "loss" in entry]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    base = PalForConditionalGeneration.from_pretrained(tmp_path / "base")
    base_weights = base.state_dict()
    trained = {name.removeprefix("base_model.model."): value for name, value in model.state_dict().items()}
    lora = [name for name in trained if "lora_B" in name]
    assert lora and all(trained[name].abs().sum() > 0 for name in lora)  # LoRA B starts at zero
    saved = [name for name in trained if ".modules_to_save.default." in name]
    assert saved and all(".plits_projectors." in name or ".lal_projectors." in name for name in saved)
    for name in saved:
        original = re.sub(r"\.modules_to_save\.default\.", ".", name)
        assert not torch.equal(trained[name], base_weights[original]), name
    for name, value in base_weights.items():
        if in_group("llm", name) or in_group("encoders", name):
            adapted = re.sub(r"\.weight$", ".base_layer.weight", name)
            assert torch.equal(trained[adapted if adapted in trained else name], value), name
    reloaded = PeftModel.from_pretrained(base, result.stages[0].output_dir).eval()
    batch = PalDataCollator(result.processor)([synth[0], synth[5]])
    batch.pop("row_ids")
    model.eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, model(**batch).logits)


def test_lora_stages_train_their_own_groups(tiny_llm_dir, tiny_whisper_dir, synth, tmp_path):
    stages = [
        {"name": "attention", "train": ["llm_attention"], "args": {"max_steps": 1}},
        {"name": "all", "train": ["connectors", "llm"], "args": {"max_steps": 1}},
    ]
    recipe = tiny_recipe(tiny_llm_dir("llama"), tiny_whisper_dir, stages)
    recipe["lora"] = {"r": 4, "lora_alpha": 8}
    result = run_curriculum(recipe, tmp_path, lora=True, data=synth.select(range(4)))
    first, second = result.stages[0].trainable, result.stages[1].trainable
    assert first["connectors"] == 0 < second["connectors"] and 0 < first["lora"] < second["lora"]
    adapters = [load_file(Path(stage.output_dir) / "adapter_model.safetensors") for stage in result.stages]
    ffn = [name for name in adapters[0] if ".mlp." in name and "lora_B" in name]
    attention = [name for name in adapters[0] if ".self_attn." in name and "lora_B" in name]
    assert ffn and attention
    assert all(adapters[0][name].abs().sum() > 0 for name in attention)
    assert all(adapters[0][name].abs().sum() == 0 for name in ffn)  # LoRA B starts at zero: untrained in stage 1
    assert all(adapters[1][name].abs().sum() > 0 for name in ffn)
    connectors = [name for name in adapters[0] if "_projectors." in name]
    base = PalForConditionalGeneration.from_pretrained(tmp_path / "base").state_dict()
    for name in connectors:
        original = base[re.sub(r"^base_model\.model\.", "", name)]
        assert torch.equal(adapters[0][name], original) and not torch.equal(adapters[1][name], original), name


# ----------------------------------------------------------------------------------------------------------------------
# accelerate (DDP over gloo) and resuming
# ----------------------------------------------------------------------------------------------------------------------


def test_accelerate_launch_two_cpu_ranks(tiny_llm_dir, tiny_whisper_dir, synth_dir, tmp_path):
    stages = [
        {"train": ["connectors"], "subset": 1, "args": {"max_steps": 2}},
        {"train": ["connectors", "llm"], "args": {"max_steps": 2}},
    ]
    recipe = tiny_recipe(tiny_llm_dir("llama"), tiny_whisper_dir, stages)
    recipe["data"] = {"dataset": synth_dir}
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
    command += [str(REPO / "examples/accelerate/ddp_cpu.yaml"), str(SCRIPT), str(tmp_path / "recipe.json")]
    command += [str(tmp_path / "out"), "--check-ddp"]
    done = subprocess.run(command, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    for rank in (0, 1):
        checks = [
            json.loads(line) for line in (tmp_path / "out" / f"ddp_check.rank{rank}.jsonl").read_text().splitlines()
        ]
        assert [check["stage"] for check in checks] == [1, 2]
        assert all(check["world_size"] == 2 and check["steps"] == 2 and check["rows"] == 4 for check in checks)


BUDGET_SCRIPT = """
import json, time
from accelerate import PartialState
from transformers import TrainerControl
from modeling_pal.training.curriculum import TimeBudgetCallback

state = PartialState(cpu=True)
budget = TimeBudgetCallback(max_seconds=1.0)
if state.process_index == 0:
    time.sleep(1.5)  # rank 0's step ends past the budget, rank 1's before it
control = TrainerControl()
budget.on_step_end(None, None, control)
print(json.dumps(control.should_training_stop))
"""


def test_max_seconds_stops_every_rank_at_the_same_step(tmp_path):
    (tmp_path / "budget.py").write_text(BUDGET_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(tmp_path / "budget.py")]
    done = subprocess.run(command, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["true", "true"]  # a rank that went on would wait forever in DDP's all-reduce


def test_killed_run_resumes_to_the_same_weights(tiny_llm_dir, tiny_whisper_dir, synth_dir, tmp_path):
    stages = [
        {"train": ["connectors"], "subset": 1, "args": {"max_steps": 2}},
        {"train": ["connectors", "llm"], "subset": 2, "args": {"max_steps": 5}},
        {"train": ["connectors", "llm"], "args": {"max_steps": 2}},
    ]
    recipe = tiny_recipe(tiny_llm_dir("llama"), tiny_whisper_dir, stages, save_strategy="steps", save_steps=2)
    recipe["data"] = {"dataset": synth_dir}
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    killed = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "recipe.json"), str(tmp_path / "resumed"), "--kill-at", "2:3"],
        env=SUBPROCESS_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -9, killed.stderr[-5000:]
    assert (tmp_path / "resumed" / "checkpoints" / "stage2" / "checkpoint-2").is_dir()
    assert not (tmp_path / "resumed" / "stage2").exists()
    resumed = run_curriculum(recipe, tmp_path / "resumed", resume=True)
    straight = run_curriculum(recipe, tmp_path / "straight")
    for (name, value), (other, reference) in zip(
        resumed.model.state_dict().items(), straight.model.state_dict().items()
    ):
        assert name == other
        torch.testing.assert_close(value, reference, atol=1e-6, rtol=0)

    def logged(run: str) -> list[dict]:
        return [json.loads(line) for line in (tmp_path / run / "sample_ids.rank0.jsonl").read_text().splitlines()]

    resumed_log, straight_log = logged("resumed"), logged("straight")
    assert resumed_log == straight_log
    steps = [(record["stage"], record["step"]) for record in resumed_log]
    assert steps == [(1, 1), (1, 2), *[(2, step) for step in range(1, 6)], (3, 1), (3, 2)]
    for stage in (1, 2, 3):  # each stage sees less than one epoch: no row twice
        rows = [row for record in resumed_log if record["stage"] == stage for row in record["ids"]]
        assert len(rows) == len(set(rows))


class CrashAtStep(TrainerCallback):
    """Raises at the end of optimizer step `step`, before that step's checkpoint is saved."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError("simulated crash")


def test_an_earlier_run_is_refused_or_overwritten_and_resume_checks_settings(
    tiny_llm_dir, tiny_whisper_dir, synth, tmp_path
):
    stages = [{"train": ["connectors"], "args": {"max_steps": 2}}]
    recipe = tiny_recipe(tiny_llm_dir("llama"), tiny_whisper_dir, stages, save_strategy="steps", save_steps=1)
    rows = synth.select(range(4))
    run_curriculum(recipe, tmp_path, data=rows, max_steps_per_stage=3)
    before = sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*"))
    with pytest.raises(ValueError, match="holds an earlier run"):
        run_curriculum(recipe, tmp_path, data=rows)  # forgot --resume: nothing is touched
    with pytest.raises(ValueError, match="exclude each other"):
        run_curriculum(recipe, tmp_path, data=rows, resume=True, overwrite=True)
    assert sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*")) == before
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_curriculum(recipe, tmp_path, data=rows, overwrite=True, callbacks=[CrashAtStep(2)])
    assert not (tmp_path / "stage1").exists()
    assert [path.name for path in (tmp_path / "checkpoints" / "stage1").iterdir()] == ["checkpoint-1"]
    resumed = run_curriculum(recipe, tmp_path, data=rows, resume=True)
    assert [entry["step"] for entry in resumed.stages[0].log_history if "loss" in entry] == [1, 2]
    with pytest.raises(ValueError, match="other settings"):
        run_curriculum(recipe, tmp_path, data=rows, max_steps_per_stage=3, resume=True)
    state_file = tmp_path / "curriculum_state.json"
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({key: value for key, value in state.items() if key != "settings"}))
    assert run_curriculum(recipe, tmp_path, data=rows, resume=True).stages  # a state from before settings were kept


@pytest.mark.parametrize("options", [{"lora_alph": 8}, {"target_modules": ["q_proj"]}])
def test_bad_lora_options_fail_before_any_stage_trains(options, tiny_llm_dir, tiny_whisper_dir, synth, tmp_path):
    stages = [{"train": ["connectors"], "args": {"max_steps": 1}}, {"train": ["connectors", "llm"]}]
    recipe = tiny_recipe(tiny_llm_dir("llama"), tiny_whisper_dir, stages)
    recipe["lora"] = {"r": 4, **options}
    with pytest.raises(ValueError, match="^`lora`: "):
        run_curriculum(recipe, tmp_path, data=synth.select(range(2)), lora=True)
    assert not (tmp_path / "stage1").exists()


def test_a_stage_without_rows_fails_the_run_at_its_start(tiny_llm_dir, tiny_whisper_dir, synth, tmp_path):
    stages = [{"train": ["connectors"], "args": {"max_steps": 1}}, {"train": ["connectors"], "subset": 1}]
    recipe = tiny_recipe(tiny_llm_dir("llama"), tiny_whisper_dir, stages)
    open_rows = synth.filter(lambda task_type: task_type == "open", input_columns="task_type")
    with pytest.raises(ValueError, match="^Stage 2: subset 1 has no training rows"):
        run_curriculum(recipe, tmp_path, data=open_rows)
    with pytest.raises(ValueError, match="^Stage 2: subset 1 needs a `task_type` column"):
        run_curriculum(recipe, tmp_path, data=synth.remove_columns("task_type"))
    assert not (tmp_path / "stage1").exists()


def test_overwrite_with_a_bad_data_or_components_path_keeps_the_earlier_run(
    tiny_llm_dir, tiny_whisper_dir, synth, tmp_path
):
    recipe = tiny_recipe(
        tiny_llm_dir("llama"), tiny_whisper_dir, [{"train": ["connectors"], "args": {"max_steps": 1}}]
    )
    for name in ("stage1/model.safetensors", "checkpoints/stage2/checkpoint-4/optimizer.pt", "curriculum_state.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("an earlier run")
    before = sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*"))
    for paths in ({"data": str(tmp_path / "typo")}, {"data": synth, "components": str(tmp_path / "typo")}):
        with pytest.raises(FileNotFoundError, match="typo"):
            run_curriculum(recipe, tmp_path, overwrite=True, **paths)
        assert sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*")) == before


@pytest.mark.parametrize(
    "mistake",
    [
        {"subset": 4},
        {"args": {"max_step": 1}},
        {"args": {"lr_scheduler_type": "x"}},
        {"args": {"eval_strategy": "steps"}},  # no `data.eval_split` to evaluate on
        {"args": {"seed": 7}},  # set by the curriculum: they were replaced without a word
        {"args": {"remove_unused_columns": True}},
    ],
)
def test_recipe_mistakes_fail_before_any_stage_trains(mistake, tiny_llm_dir, tiny_whisper_dir, synth, tmp_path):
    stages = [{"train": ["connectors"], "args": {"max_steps": 1}}, {"train": ["connectors", "llm"], **mistake}]
    recipe = tiny_recipe(tiny_llm_dir("llama"), tiny_whisper_dir, stages)
    with pytest.raises(ValueError, match="^Stage 2: "):
        run_curriculum(recipe, tmp_path, data=synth.select(range(2)))
    assert not (tmp_path / "stage1").exists()


def test_stages_evaluate_on_the_recipes_eval_split(tiny_llm_dir, tiny_whisper_dir, synth_dir, tmp_path):
    stages = [{"train": ["connectors"], "args": {"max_steps": 2, "eval_strategy": "steps", "eval_steps": 1}}]
    recipe = tiny_recipe(tiny_llm_dir("llama"), tiny_whisper_dir, stages)
    recipe["data"] = {"eval_split": "validation"}
    result = run_curriculum(recipe, tmp_path, data=load_from_disk(synth_dir))  # a DatasetDict
    evaluations = [entry for entry in result.stages[0].log_history if "eval_loss" in entry]
    assert [entry["step"] for entry in evaluations] == [1, 2] and all(np.isfinite(e["eval_loss"]) for e in evaluations)
    with pytest.raises(ValueError, match="no split 'dev'; its splits are"):
        run_curriculum({**recipe, "data": {"dataset": synth_dir, "eval_split": "dev"}}, tmp_path, overwrite=True)


def test_a_recipe_means_the_same_for_trainer_and_sft_trainer(tmp_path):
    recipe = {"training": {"per_device_train_batch_size": 2}, "stages": [{"train": ["connectors"]}]}
    hf, trl = (_all_training_args(recipe, tmp_path, None, use_cpu=True, trl=trl)[0] for trl in (False, True))
    differing = {
        field.name: (getattr(hf, field.name), getattr(trl, field.name))
        for field in dataclasses.fields(TrainingArguments)
        if getattr(hf, field.name) != getattr(trl, field.name)
    }
    assert differing == {}


# ----------------------------------------------------------------------------------------------------------------------
# The smoke recipe through the example script, and docs/training.md
# ----------------------------------------------------------------------------------------------------------------------


class CountTrainable(TrainerCallback):
    def __init__(self):
        self.counts = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.counts.append(sum(p.numel() for p in model.parameters() if p.requires_grad))


def train_curriculum_script():
    spec = importlib.util.spec_from_file_location("train_curriculum", REPO / "examples" / "train_curriculum.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


@pytest.mark.parametrize("option", ["--recipe", "--data"])
def test_train_curriculum_names_a_missing_path(option, tmp_path, capsys):
    arguments = {"--recipe": str(REPO / "examples/recipes/smoke.yaml"), "--output_dir": str(tmp_path)}
    arguments[option] = str(tmp_path / "typo")
    with pytest.raises(SystemExit) as exit_info:
        train_curriculum_script().main([item for pair in arguments.items() for item in pair])
    assert exit_info.value.code == 2 and f"argument {option}: no such" in capsys.readouterr().err


def test_smoke_recipe_runs_three_stages(tmp_path, monkeypatch):
    script = train_curriculum_script()
    counter = CountTrainable()
    monkeypatch.setattr(script, "run_curriculum", lambda *a, **k: run_curriculum(*a, callbacks=[counter], **k))
    result = script.main(["--recipe", str(REPO / "examples/recipes/smoke.yaml"), "--output_dir", str(tmp_path)])
    assert [stage.stage for stage in result.stages] == [1, 2, 3]
    assert (tmp_path / "loss.png").stat().st_size > 0 and (tmp_path / "sample_ids.rank0.jsonl").is_file()

    base = LlamaForCausalLM.from_pretrained(tmp_path / "components" / "llm").model.state_dict()
    stage_llms = [
        PalForConditionalGeneration.from_pretrained(tmp_path / f"stage{n}").model.language_model.state_dict()
        for n in (1, 2)
    ]
    assert all(torch.equal(stage_llms[0][name], value) for name, value in base.items())
    assert any(not torch.equal(stage_llms[1][name], value) for name, value in base.items())

    model = result.model
    connectors = sum(p.numel() for name, p in model.named_parameters() if "_projectors." in name)
    llm = sum(p.numel() for p in model.model.language_model.parameters())  # lm_head is tied to the embedding
    assert counter.counts == [connectors, connectors + llm, connectors + llm]
    assert [stage.trainable for stage in result.stages] == [{"connectors": connectors}] + [
        {"connectors": connectors, "llm": llm}
    ] * 2


@pytest.mark.parametrize("name", ["smoke", "pal_synth", "openaqa_llama32_1b"])
def test_recipes_are_valid(name, tmp_path):
    recipe = load_recipe(REPO / "examples" / "recipes" / f"{name}.yaml")
    for trl in (False, True):  # every stage's TrainingArguments / SFTConfig builds
        assert len(_all_training_args(recipe, tmp_path, None, use_cpu=True, trl=trl)) == 3
    assert [stage["train"] for stage in recipe["stages"]] == [
        ["connectors"],
        ["connectors", "llm"],
        ["connectors", "llm"],
    ]
    assert [stage["subset"] for stage in recipe["stages"]] == [1, 2, 3]
    with pytest.raises(ValueError, match="unknown groups"):
        load_recipe({**recipe, "stages": [{"train": ["projector"]}]})


def test_docs_examples_run(tiny_llm_dir, tiny_whisper_dir, synth_dir, tmp_path, monkeypatch):
    hub_ids = {
        "meta-llama/Llama-3.2-1B-Instruct": tiny_llm_dir("llama"),
        "openai/whisper-large-v3": tiny_whisper_dir,
        "pal_synth/": synth_dir,
    }
    source = DOCS.read_text(encoding="utf-8")
    for hub_id, local in hub_ids.items():
        assert hub_id in source
        source = source.replace(f'"{hub_id}"', repr(local))
    blocks = re.findall(r"```python\n(.*?)```", source, flags=re.DOTALL)
    assert blocks
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for block in blocks:
        exec(compile(block, str(DOCS), "exec"), namespace)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "holds NoneType"),
        ("- train: [connectors]\n", "holds list"),
        ("stages: {train: [connectors]}\n", "`stages` must be a list"),
        ("stages:\n  - connectors\n", "Stage 1: a stage is a mapping"),
        ("stages:\n  - train: connectors\n", r"Stage 1: `train` must be a list of groups, e.g. \[connectors\]"),
        ("stages: [{train: [connectors]}]\nmodel: {intergration: lal}\n", r"`model` takes .*; got \['intergration'\]"),
        ("stages: [{train: [connectors]}]\ndata: {max_lenght: 64}\n", r"`data` takes .*; got \['max_lenght'\]"),
    ],
)
def test_malformed_recipe_files_are_refused_with_the_reason(text, match, tmp_path):
    (tmp_path / "recipe.yaml").write_text(text)
    with pytest.raises(ValueError, match=match):
        load_recipe(tmp_path / "recipe.yaml")


def test_deepspeed_config_takes_batch_and_clipping_settings_from_the_recipe():
    from accelerate.utils import DeepSpeedPlugin

    settings = yaml.safe_load((REPO / "examples/accelerate/deepspeed_zero2.yaml").read_text())["deepspeed_config"]
    plugin = DeepSpeedPlugin(**{k: v for k, v in settings.items() if k != "zero3_init_flag"})
    # a fixed value here that differs from the recipe's TrainingArguments makes Trainer refuse to start
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
        assert plugin.deepspeed_config.get(key, "auto") == "auto", key
