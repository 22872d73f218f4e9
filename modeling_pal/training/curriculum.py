"""
PAL's multi-stage training curriculum, driven by a YAML recipe: each stage trains named parameter groups (see
`set_trainable`) on a subset of the data with `Trainer` (or TRL's `SFTTrainer`), optionally with LoRA, and saves the
model and processor. Runs resume at the same stage and data position; everything runs unchanged under
`accelerate launch`.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import yaml
from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from datasets import Audio, Dataset, DatasetDict, load_from_disk
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import logging

from ..data.synth import STAGE_TASK_TYPES, build_pal_synth, stage_subset
from ..modeling_pal import PalForConditionalGeneration
from ..processing_pal import PalProcessor
from .collator import PalDataCollator
from .tiny import build_tiny_components
from .trainable import (
    LORA_DERIVED_OPTIONS,
    TRAINABLE_GROUPS,
    lora_config,
    row_masked_parameters,
    set_lora_trainable,
    set_trainable,
)

logger = logging.get_logger(__name__)

STATE_FILE = "curriculum_state.json"
LOSS_PLOT = "loss.png"
RECIPE_SECTIONS = {"name", "seed", "components", "model", "data", "training", "stages", "lora"}
STAGE_KEYS = {"name", "train", "subset", "args", "max_seconds"}
SECTION_KEYS = {
    "model": {"text_model", "audio_encoders", "integration", "audio_encoder_settings", "config"},
    "data": {"dataset", "size", "seed", "split", "eval_split", "max_length"},
}
# The collator reads the raw `messages` and `audio` columns, so the Trainer must keep them
FIXED_ARGS = {"remove_unused_columns": False}
# `TrainingArguments` the curriculum sets itself, refused in a recipe's `training` / stage `args` (they were replaced
# without a word), with where they come from.
CURRICULUM_ARGS = {
    "output_dir": "each stage writes under the run's output_dir",
    "seed": "the recipe's top-level `seed` seeds every stage",
    "use_cpu": "the device follows how the run is launched",
    "remove_unused_columns": "it stays False: the collator reads the raw chat and audio columns",
}
# TRL's `SFTConfig` changes these `TrainingArguments` defaults (learning rate, bf16 autocast, activation
# checkpointing, logging)
TRL_DEFAULTS_OVERRIDDEN = {
    "learning_rate": TrainingArguments.learning_rate,
    "bf16": False,
    "activation_checkpointing": False,
    "logging_steps": 500,
}


def load_recipe(recipe: str | Path | Mapping) -> dict:
    """
    Reads and checks a recipe (a YAML file or a dict). Sections: `stages` (required: each with `train`, a list of
    groups, and optionally `name`, `subset` (1, 2 or 3: `stage_subset`), `args` (`TrainingArguments` for this stage)
    and `max_seconds`), `model`, `data`, `training` (`TrainingArguments` for every stage), `components`, `lora`,
    `seed`, `name`. See `docs/training.md`.
    """
    if not isinstance(recipe, Mapping):
        source, recipe = recipe, yaml.safe_load(Path(recipe).read_text())
        if not isinstance(recipe, Mapping):
            raise ValueError(f"A recipe is a mapping of sections; {source} holds {type(recipe).__name__}")
    recipe = dict(recipe)
    unknown = set(recipe) - RECIPE_SECTIONS
    if unknown or not recipe.get("stages"):
        raise ValueError(f"A recipe needs `stages` and takes only {sorted(RECIPE_SECTIONS)}; got {sorted(recipe)}")
    for section, keys in SECTION_KEYS.items():
        unknown = set(recipe.get(section) or {}) - keys
        if unknown:
            raise ValueError(f"`{section}` takes {sorted(keys)}; got {sorted(unknown)}")
    if not isinstance(recipe["stages"], (list, tuple)):
        raise ValueError(f"`stages` must be a list of stages, got {recipe['stages']!r}")
    for number, stage in enumerate(recipe["stages"], 1):
        _check_stage(number, stage)
    return recipe


def _check_stage(number: int, stage: Mapping) -> None:
    """Raises a `ValueError` naming the stage when its keys, groups, `subset` or `args` are malformed."""
    if not isinstance(stage, Mapping):
        raise ValueError(
            f"Stage {number}: a stage is a mapping with `train` and optional {sorted(STAGE_KEYS - {'train'})}"
        )
    if isinstance(stage.get("train"), str):
        raise ValueError(
            f"Stage {number}: `train` must be a list of groups, e.g. [connectors], got {stage['train']!r}"
        )
    bad_keys = set(stage) - STAGE_KEYS
    bad_groups = set(stage.get("train", [])) - set(TRAINABLE_GROUPS)
    if bad_keys or bad_groups or not stage.get("train"):
        raise ValueError(
            f"Stage {number}: `train` lists groups among {TRAINABLE_GROUPS} and the keys are among "
            f"{sorted(STAGE_KEYS)}; unknown groups {sorted(bad_groups)}, unknown keys {sorted(bad_keys)}"
        )
    if "subset" in stage and stage["subset"] not in STAGE_TASK_TYPES:
        raise ValueError(
            f"Stage {number}: `subset` must be one of {sorted(STAGE_TASK_TYPES)}, got {stage['subset']!r}"
        )
    if not isinstance(stage.get("args", {}), Mapping):
        raise ValueError(f"Stage {number}: `args` must be a mapping of TrainingArguments, got {stage['args']!r}")


@dataclass
class StageResult:
    """What a finished stage left: its output directory, trainable parameter counts and logged losses."""

    stage: int
    name: str
    output_dir: str
    trainable: dict[str, int]
    log_history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class CurriculumResult:
    """The trained model (a `PeftModel` after LoRA stages), its processor and one `StageResult` per stage."""

    model: torch.nn.Module
    processor: PalProcessor
    stages: list[StageResult]


class SampleLogMixin:
    """
    Trainer mixin: pops the collator's `row_ids` before the forward and appends them, per optimizer step, to a JSON
    lines file (one per rank); keeps `set_trainable`'s row-masked embeddings out of weight decay.
    """

    def __init__(self, *args, sample_log: str | Path | None = None, stage: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self.sample_log = None if sample_log is None else Path(sample_log)
        self.stage = stage

    def compute_loss(self, model, inputs, *args, **kwargs):
        row_ids = inputs.pop("row_ids", None)
        if row_ids is not None and model.training and self.sample_log is not None:
            record = {"stage": self.stage, "step": self.state.global_step + 1, "ids": row_ids}
            with self.sample_log.open("a") as log:
                log.write(json.dumps(record) + "\n")
        return super().compute_loss(model, inputs, *args, **kwargs)

    def get_decay_parameter_names(self, model) -> list[str]:
        masked = row_masked_parameters(model)
        return [name for name in super().get_decay_parameter_names(model) if name not in masked]


class PalTrainer(SampleLogMixin, Trainer):
    """`Trainer` that logs sample ids and respects `set_trainable`'s row masks."""


def sft_trainer_class() -> type:
    """TRL's `SFTTrainer` with the same mixin (TRL is imported only when used)."""
    from trl import SFTTrainer

    return type("PalSFTTrainer", (SampleLogMixin, SFTTrainer), {"__doc__": PalTrainer.__doc__})


class TimeBudgetCallback(TrainerCallback):
    """
    Ends a stage once it has run `max_seconds`, even before `max_steps` (the stage's model is saved as usual). With
    several processes the main process's clock decides for all of them, so that every rank stops at the same step
    (a rank that went on would wait forever in the next gradient all-reduce).
    """

    def __init__(self, max_seconds: float):
        self.max_seconds = max_seconds
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        over_budget = [time.perf_counter() - self.start > self.max_seconds]
        if PartialState().use_distributed:
            broadcast_object_list(over_budget, from_process=0)
        if over_budget[0]:
            control.should_training_stop = True


def _path(root: str | Path | None, value: str) -> str:
    """A component path relative to the components directory (absolute paths and Hub ids without one)."""
    return value if root is None else str(Path(root, value))


def build_model(recipe: dict, components: str | Path | None) -> tuple[PalForConditionalGeneration, PalProcessor]:
    """A fresh PAL model and processor from the recipe's `model` section (paths relative to `components`), with the
    new connectors initialised from the recipe's `seed`."""
    settings = recipe.get("model", {})
    set_seed(recipe.get("seed", 0))
    text_model = _path(components, settings.get("text_model", "llm"))
    encoders = {name: _path(components, path) for name, path in settings.get("audio_encoders", {}).items()}
    model = PalForConditionalGeneration.from_components(
        text_model,
        encoders,
        integration=settings.get("integration", "pal"),
        audio_encoder_settings=settings.get("audio_encoder_settings"),
        **settings.get("config", {}),
    )
    return model, PalProcessor.from_components(text_model, encoders, model.config)


def load_training_data(
    recipe: dict, data: str | Path | Dataset | DatasetDict | None = None
) -> tuple[Dataset, Dataset | None]:
    """
    The training split and the evaluation split: `data` when given (a `Dataset`, a `DatasetDict` or a `save_to_disk`
    directory), else the recipe's `data.dataset` (`synth` builds PAL-Synth in memory from `data.size` and
    `data.seed`; anything else is a directory). From a `DatasetDict`, `data.split` (default `train`) trains and
    `data.eval_split` (default none) evaluates; a `Dataset` has no evaluation split.
    """
    settings = recipe.get("data", {})
    source = data if data is not None else settings.get("dataset", "synth")
    if isinstance(source, (Dataset, DatasetDict)):
        dataset = source
    elif source == "synth":
        dataset = build_pal_synth(settings.get("size", 40), settings.get("seed", recipe.get("seed", 0)))
    else:
        dataset = load_from_disk(str(source))
    train_split, eval_split = settings.get("split", "train"), settings.get("eval_split")
    if not isinstance(dataset, DatasetDict):
        if eval_split is not None:
            raise ValueError(f"data.eval_split={eval_split!r} needs a DatasetDict, but the data is a single Dataset")
        return _encoded_audio(dataset), None
    for split in (train_split, eval_split):
        if split is not None and split not in dataset:
            raise ValueError(f"The data has no split {split!r}; its splits are {list(dataset)}")
    evaluation = _encoded_audio(dataset[eval_split]) if eval_split is not None else None
    return _encoded_audio(dataset[train_split]), evaluation


def _encoded_audio(dataset: Dataset) -> Dataset:
    """Leaves `Audio` columns encoded: the processor decodes the bytes (soundfile), much faster than `AudioDecoder`s."""
    for name, feature in dataset.features.items():
        if isinstance(feature, Audio) and feature.decode:
            dataset = dataset.cast_column(name, Audio(sampling_rate=feature.sampling_rate, decode=False))
    return dataset


def _components_folder(recipe: dict, components: str | Path | None) -> str | Path | None:
    """`run_curriculum`'s components, else the recipe's: a folder, `tiny` or `None` (Hub ids); a missing folder
    raises."""
    components = components if components is not None else recipe.get("components")
    if components not in (None, "tiny") and not Path(components).is_dir():
        raise FileNotFoundError(f"components folder not found: {components}")
    return components


def _resolve_components(
    recipe: dict, components, dataset: Dataset, output_dir: Path, state: PartialState, fresh: bool
) -> str | None:
    """The components directory; `tiny` builds tiny random components on the main process (again in a fresh run,
    whose recipe or data may differ from the last one's)."""
    if components != "tiny":
        return components
    target = output_dir / "components"
    if state.is_main_process and (fresh or not (target / "llm" / "config.json").is_file()):
        build_tiny_components(dataset, target, seed=recipe.get("seed", 0))
    state.wait_for_everyone()
    return str(target)


def _trains_llm(groups: Sequence[str]) -> bool:
    """Whether a stage trains an `llm*` group (with LoRA: a LoRA stage)."""
    return any(group.startswith("llm") for group in groups)


def _lora_groups(recipe: dict) -> list[str]:
    """Every group of the recipe's LoRA stages: the one adapter, added at the first of them, covers them all."""
    return sorted({group for stage in recipe["stages"] if _trains_llm(stage["train"]) for group in stage["train"]})


def _prepare_stage(model, groups: list[str], run: _Run):
    """
    Sets the stage's trainable parameters. With LoRA, stages that train an LLM group train through one adapter
    added at the first of them for every LoRA stage's groups; each stage trains only its own groups' part of it.
    """
    from_peft = hasattr(model, "peft_config")
    if run.lora is None or not _trains_llm(groups):
        if from_peft:
            raise ValueError("A LoRA curriculum cannot go back to a full-parameter stage after its LoRA stages")
        return model, set_trainable(model, groups)
    if not from_peft:
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(model, _lora_groups(run.recipe), **run.lora))
        model.peft_config["default"].base_model_name_or_path = run.state["lora_base"]
    return model, set_lora_trainable(model, groups)


def _training_args(recipe: dict, stage: dict, output_dir: Path, max_steps: int | None, use_cpu: bool, trl: bool):
    """The stage's `TrainingArguments` (or TRL `SFTConfig`): recipe defaults, then the stage's own, then overrides."""
    given = {**recipe.get("training", {}), **stage.get("args", {})}
    taken = [f"`{name}` ({CURRICULUM_ARGS[name]})" for name in given if name in CURRICULUM_ARGS]
    if taken:
        raise ValueError(f"set by the curriculum, not by a recipe: {'; '.join(taken)}")
    values = {"report_to": "none", **given, **FIXED_ARGS}
    values.update(output_dir=str(output_dir), seed=recipe.get("seed", 0), use_cpu=use_cpu)
    if max_steps is not None:
        values["max_steps"] = max_steps
    if not trl:
        return TrainingArguments(**values)
    from trl import SFTConfig

    for name, trainer_default in TRL_DEFAULTS_OVERRIDDEN.items():  # a recipe means the same for both trainers
        values.setdefault(name, trainer_default)
    return SFTConfig(**values, dataset_kwargs={"skip_prepare_dataset": True}, max_length=None)


def _all_training_args(recipe: dict, output_dir: Path, max_steps: int | None, use_cpu: bool, trl: bool) -> list:
    """Every stage's `TrainingArguments` (or `SFTConfig`), built before any training so that a bad key or value in a
    later stage (or an evaluation without `data.eval_split`) fails the run at its start."""
    stage_args = []
    for number, stage in enumerate(recipe["stages"], 1):
        checkpoints = output_dir / "checkpoints" / f"stage{number}"
        try:
            args = _training_args(recipe, stage, checkpoints, max_steps, use_cpu, trl)
        except (TypeError, ValueError) as error:
            raise ValueError(f"Stage {number}: invalid training arguments (`training` and `args`): {error}") from error
        if args.eval_strategy != "no" and recipe.get("data", {}).get("eval_split") is None:
            raise ValueError(
                f"Stage {number}: eval_strategy={args.eval_strategy.value!r} needs evaluation rows: name a split of "
                "the data in the recipe's `data.eval_split`"
            )
        stage_args.append(args)
    return stage_args


def _check_lora_options(options: Mapping) -> None:
    """Raises a `ValueError` unless the recipe's `lora` section is valid `LoraConfig` options that PAL leaves to it."""
    from peft import LoraConfig

    derived = sorted(set(options) & set(LORA_DERIVED_OPTIONS))
    if derived:
        raise ValueError(f"`lora`: {derived} follow from each stage's `train` groups (see `lora_config`); drop them")
    try:
        LoraConfig(**options)
    except (TypeError, ValueError) as error:
        raise ValueError(f"`lora`: invalid LoraConfig options: {error}") from error


def _previous_run(output_dir: Path) -> list[Path]:
    """What an earlier run left in `output_dir`: its state, stage outputs, checkpoints and logs."""
    names = [STATE_FILE, LOSS_PLOT, "base", "checkpoints"]
    found = [output_dir / name for name in names if (output_dir / name).exists()]
    return found + sorted([*output_dir.glob("sample_ids.rank*.jsonl"), *output_dir.glob("stage[0-9]*")])


def _start_fresh(output_dir: Path, overwrite: bool, distributed: PartialState) -> None:
    """
    Clears an earlier run from `output_dir` when `overwrite`, so that a fresh run never mixes with it and a later
    resume never continues it; without `overwrite`, an earlier run (perhaps hours of training to resume) is refused.
    """
    previous = _previous_run(output_dir)
    if previous and not overwrite:
        raise ValueError(
            f"{output_dir} holds an earlier run ({', '.join(path.name for path in previous[:4])}, …): continue it with "
            "resume=True (--resume), remove it with overwrite=True (--overwrite), or choose another output_dir"
        )
    if distributed.is_main_process:
        for path in previous:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    distributed.wait_for_everyone()


def _setting(value: str | Path | Dataset | DatasetDict | None) -> str | None:
    """How the state file names a run's data or components override: its path, or the datasets' fingerprints."""
    if isinstance(value, Dataset):
        return value._fingerprint
    if isinstance(value, DatasetDict):
        return ",".join(f"{name}:{split._fingerprint}" for name, split in value.items())
    return None if value is None else str(value)


def _load_state(output_dir: Path, recipe: dict, settings: dict, resume: bool) -> dict:
    """
    The curriculum's state file: the recipe, the run's settings (data, components, step override, trainer, LoRA)
    and the finished stages. A fresh run starts a new one; a resume needs the same recipe and settings.
    """
    path = output_dir / STATE_FILE
    if not resume or not path.is_file():
        return {"recipe": recipe, "settings": settings, "completed": [], "lora_base": None}
    state = json.loads(path.read_text())
    if state["recipe"] != json.loads(json.dumps(recipe)):
        raise ValueError(f"{path} was written for another recipe; resume with the same recipe or a new output_dir")
    if "settings" not in state:  # written before runs recorded their settings: resumed on trust, and recorded now
        logger.warning(f"{path} records no run settings; resuming with {settings}")
        state["settings"] = settings
    if state["settings"] != json.loads(json.dumps(settings)):
        raise ValueError(
            f"{path} was written with other settings ({state.get('settings')}, now {settings}); resume with the same "
            "data, components, max_steps_per_stage, trainer and lora, or start a fresh run"
        )
    return state


def _restore_model(state: dict, recipe: dict, components) -> tuple[torch.nn.Module, PalProcessor]:
    """The model after the last finished stage (base + adapter after LoRA stages), or a fresh one."""
    if not state["completed"]:
        return build_model(recipe, components)
    last = state["completed"][-1]["output_dir"]
    processor = PalProcessor.from_pretrained(last)
    if state["lora_base"] is None:
        return PalForConditionalGeneration.from_pretrained(last), processor
    from peft import PeftModel

    base = PalForConditionalGeneration.from_pretrained(state["lora_base"])
    return PeftModel.from_pretrained(base, last, is_trainable=True), processor


def _trim_sample_log(path: Path, stage: int, last_step: int) -> None:
    """Drops records of steps after the checkpoint a stage resumes from (they are trained, and logged, again)."""
    if not path.is_file():
        return
    records = [json.loads(line) for line in path.read_text().splitlines()]
    kept = [r for r in records if r["stage"] < stage or (r["stage"] == stage and r["step"] <= last_step)]
    path.write_text("".join(json.dumps(record) + "\n" for record in kept))


def plot_losses(stages: Sequence[StageResult], path: str | Path) -> None:
    """Writes the training loss of every stage against the curriculum's cumulative step as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    offset = 0
    for result in stages:
        points = [(entry["step"] + offset, entry["loss"]) for entry in result.log_history if "loss" in entry]
        if points:
            axes.plot(*zip(*points), marker=".", label=f"stage {result.stage}: {result.name}")
        offset += max((entry.get("step", 0) for entry in result.log_history), default=0)
    axes.set(xlabel="optimizer step", ylabel="training loss", title="PAL curriculum")
    if axes.lines:  # no stage logged a loss (fewer steps than logging_steps): nothing to label
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


@dataclass
class _Run:
    """What every stage of one curriculum run shares."""

    recipe: dict
    output_dir: Path
    state: dict
    distributed: PartialState
    collator: PalDataCollator
    trl: bool
    lora: dict | None
    stage_args: list[TrainingArguments]
    stage_data: list[tuple[Dataset, Dataset | None]]
    resume: bool
    callbacks: Sequence[TrainerCallback]

    @property
    def sample_log(self) -> Path:
        return self.output_dir / f"sample_ids.rank{self.distributed.process_index}.jsonl"

    def save_state(self, results: list[StageResult]) -> None:
        if self.distributed.is_main_process:
            self.state["completed"] = [asdict(result) for result in results]
            (self.output_dir / STATE_FILE).write_text(json.dumps(self.state, indent=2))
            plot_losses(results, self.output_dir / LOSS_PLOT)
        self.distributed.wait_for_everyone()

    def lora_base(self, model, stage: dict) -> str | None:
        """The full model LoRA adapters apply to: the last stage's output, or the initial model saved to `base/`."""
        if self.lora is None or self.state["lora_base"] is not None:
            return self.state["lora_base"]
        if not _trains_llm(stage["train"]):
            return None
        if self.state["completed"]:
            return self.state["completed"][-1]["output_dir"]
        base = self.output_dir / "base"
        if self.distributed.is_main_process:
            model.save_pretrained(base)
            self.collator.processor.save_pretrained(base)
        self.distributed.wait_for_everyone()
        return str(base)


def _subset_rows(number: int, stage: dict, rows: Dataset | None) -> Dataset | None:
    """The rows of `rows` (training or evaluation rows, or `None`) that stage `number`'s `subset` keeps."""
    if rows is None or "subset" not in stage:
        return rows
    if "task_type" not in rows.column_names:
        raise ValueError(
            f"Stage {number}: subset {stage['subset']} needs a `task_type` column (docs/data_schema.md); the data has "
            f"{rows.column_names}"
        )
    return stage_subset(rows, stage["subset"])


def _stage_data(
    recipe: dict, stage_args: list[TrainingArguments], dataset: Dataset, eval_dataset: Dataset | None
) -> list[tuple[Dataset, Dataset | None]]:
    """
    Each stage's training rows and evaluation rows (`None` when it does not evaluate), computed before any training
    so that a stage left without rows fails the run at its start.
    """
    stage_data = []
    for number, (stage, args) in enumerate(zip(recipe["stages"], stage_args), 1):
        train, evaluation = (_subset_rows(number, stage, rows) for rows in (dataset, eval_dataset))
        evaluation = evaluation if args.eval_strategy != "no" else None
        source = f"subset {stage['subset']}" if "subset" in stage else "the data"
        for kind, rows in (("training", train), ("evaluation", evaluation)):
            if rows is not None and len(rows) == 0:
                raise ValueError(f"Stage {number}: {source} has no {kind} rows")
        stage_data.append((train, evaluation))
    return stage_data


def _run_stage(run: _Run, number: int, stage: dict, model) -> tuple[torch.nn.Module, StageResult]:
    """Trains one stage (from its last checkpoint when resuming) and saves the model and processor."""
    start = time.perf_counter()
    name = stage.get("name", f"stage{number}")
    run.state["lora_base"] = run.lora_base(model, stage)
    model, trainable = _prepare_stage(model, list(stage["train"]), run)
    stage_data, eval_data = run.stage_data[number - 1]
    if run.distributed.is_main_process:
        logger.info(f"Stage {number} ({name}): {len(stage_data)} rows; trainable parameters {trainable}")
    args = run.stage_args[number - 1]
    checkpoints = Path(args.output_dir)
    checkpoint = get_last_checkpoint(str(checkpoints)) if run.resume and checkpoints.is_dir() else None
    _trim_sample_log(run.sample_log, number, int(checkpoint.rsplit("-", 1)[1]) if checkpoint else 0)
    budget = [TimeBudgetCallback(stage["max_seconds"])] if "max_seconds" in stage else []
    trainer_class = sft_trainer_class() if run.trl else PalTrainer
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=stage_data,
        eval_dataset=eval_data,
        data_collator=run.collator,
        processing_class=run.collator.processor,
        callbacks=[*run.callbacks, *budget],
        sample_log=run.sample_log,
        stage=number,
    )
    trainer.train(resume_from_checkpoint=checkpoint)
    stage_dir = run.output_dir / f"stage{number}"
    trainer.save_model(str(stage_dir))
    seconds = time.perf_counter() - start
    return model, StageResult(number, name, str(stage_dir), trainable, trainer.state.log_history, seconds)


def run_curriculum(
    recipe: str | Path | Mapping,
    output_dir: str | Path,
    *,
    max_steps_per_stage: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    trainer: str = "hf",
    lora: bool = False,
    components: str | Path | None = None,
    data: str | Path | Dataset | DatasetDict | None = None,
    callbacks: Sequence[TrainerCallback] = (),
) -> CurriculumResult:
    """
    Runs a recipe's stages in order, saving the model and processor to `output_dir/stage{n}` after each one.

    Args:
        recipe: a YAML file or a dict (see `load_recipe`).
        output_dir: holds `stage{n}/`, Trainer checkpoints (`checkpoints/stage{n}/`), `curriculum_state.json`,
            `sample_ids.rank{r}.jsonl` (row ids per step and rank) and `loss.png`.
        max_steps_per_stage: overrides every stage's `max_steps`.
        resume: skip finished stages and continue the current one from its last Trainer checkpoint (same data
            position, optimizer and RNG state).
        overwrite: start fresh in an `output_dir` that holds an earlier run, removing it (without `resume` or
            `overwrite`, such a folder raises a `ValueError` before anything is touched).
        trainer: `"hf"` (`Trainer`) or `"trl"` (TRL `SFTTrainer` with the PAL collator).
        lora: train the stages' LLM groups through LoRA adapters (recipe section `lora`: `LoraConfig` options), with
            the connectors in `modules_to_save`.
        components: overrides the recipe's `components` (a directory with the recipe's model paths, or `tiny`).
        data: overrides the recipe's data (a `Dataset`, a `DatasetDict` or a `save_to_disk` directory).
        callbacks: extra `TrainerCallback`s for every stage.
    """
    recipe = load_recipe(recipe)
    if trainer not in ("hf", "trl"):
        raise ValueError(f'trainer must be "hf" or "trl", got {trainer!r}')
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    distributed = PartialState(cpu=not torch.accelerator.is_available())
    use_cpu = distributed.device.type == "cpu"
    stage_args = _all_training_args(recipe, output_dir, max_steps_per_stage, use_cpu, trainer == "trl")
    if lora:
        _check_lora_options(recipe.get("lora", {}))
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: resume continues the run that overwrite removes")
    # a bad path or a stage without rows fails before an earlier run is removed
    dataset, eval_dataset = load_training_data(recipe, data)
    stage_data = _stage_data(recipe, stage_args, dataset, eval_dataset)
    components = _components_folder(recipe, components)
    if not resume:
        _start_fresh(output_dir, overwrite, distributed)
    components = _resolve_components(recipe, components, dataset, output_dir, distributed, fresh=not resume)
    settings = {
        "data": _setting(data),
        "components": _setting(components),
        "max_steps_per_stage": max_steps_per_stage,
        "trainer": trainer,
        "lora": lora,
    }
    state = _load_state(output_dir, recipe, settings, resume)
    model, processor = _restore_model(state, recipe, components)
    run = _Run(
        recipe=recipe,
        output_dir=output_dir,
        state=state,
        distributed=distributed,
        collator=PalDataCollator(processor, max_length=recipe.get("data", {}).get("max_length")),
        trl=trainer == "trl",
        lora=recipe.get("lora", {}) if lora else None,
        stage_args=stage_args,
        stage_data=stage_data,
        resume=resume,
        callbacks=callbacks,
    )
    results = [StageResult(**entry) for entry in state["completed"]]
    for number, stage in enumerate(recipe["stages"], 1):
        if number > len(results):
            model, result = _run_stage(run, number, stage, model)
            results.append(result)
            run.save_state(results)
    return CurriculumResult(model, processor, results)
