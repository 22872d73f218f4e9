"""
The controlled comparison of `reproduce.py`: the variants (each a recipe derived from `examples/recipes/pal_synth.yaml`
by overriding its model and stage settings), the fixed evaluation subset, and one (variant, seed) run: the curriculum
(`run_curriculum`) with time-limited stages, then greedy answers on the subset, scored per task.

Imports torch and the library; the report side (`_reproduce_report.py`) does not.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import transformers
from _reproduce_report import (
    CAPTION_TASKS,
    CHOICE_TASKS,
    SCHEMA_VERSION,
    TRANSCRIPTION_TASKS,
    run_scores,
)
from datasets import Audio, DatasetDict, load_from_disk
from transformers import TrainerCallback

from modeling_pal.data.synth import PAL_SYNTH_VERSION, build_pal_synth, pal_synth_version
from modeling_pal.evaluation.answers import normalize_text
from modeling_pal.evaluation.runner import generate_answers, score_predictions
from modeling_pal.training.curriculum import load_recipe, run_curriculum
from modeling_pal.training.tiny import build_tiny_components, save_tiny_clap

ROOT = Path(__file__).resolve().parent.parent
BASE_RECIPE = ROOT / "examples" / "recipes" / "pal_synth.yaml"
EVAL_SPLITS = ("test", "test_compositional")
# Greedy answer length per task: choice answers are 1-2 tokens, transcripts ≤ 6, captions and open answers ≤ 23
MAX_NEW_TOKENS = {**dict.fromkeys(CHOICE_TASKS, 8), **dict.fromkeys(TRANSCRIPTION_TASKS, 16)}
MAX_NEW_TOKENS.update(dict.fromkeys(CAPTION_TASKS, 28))
SUBSET_SEED = 0


@dataclass(frozen=True)
class Variant:
    """One arm of the comparison: which encoders, routed how, and what stages 2-3 train."""

    description: str
    encoders: tuple[str, ...]
    integration: str
    config: dict = field(default_factory=dict)
    later_stages_train: tuple[str, ...] | None = None  # None: as in the base recipe


VARIANTS = {
    "plits": Variant(
        "PLITS ensemble: Whisper and CLAP tokens both as LLM input embeddings", ("whisper", "clap"), "plits"
    ),
    "lal": Variant("LAL ensemble: Whisper and CLAP both as extra keys/values, delayed", ("whisper", "clap"), "lal"),
    "pal": Variant("PAL: Whisper via PLITS, CLAP via LAL (delayed)", ("whisper", "clap"), "pal"),
    "hybrid": Variant(
        "hybrid, one encoder (Whisper): Q-Former summaries via PLITS + the full sequence via LAL",
        ("whisper",),
        "hybrid",
    ),
    "lal_layer0": Variant(
        "LAL ensemble integrated from layer 0 (no delay)", ("whisper", "clap"), "lal", {"lal_start_layer": 0}
    ),
    "lal_frozen_ffn": Variant(
        "LAL ensemble, frozen FFN: stages 2-3 train connectors + LLM attention only",
        ("whisper", "clap"),
        "lal",
        later_stages_train=("connectors", "llm_attention"),
    ),
    "lal_clap": Variant("LAL, one encoder (CLAP only)", ("clap",), "lal"),
}
DEFAULT_SEEDS = (0, 1, 2)

# Smoke mode: tiny random components, a tiny PAL-Synth, 2 optimizer steps per stage, 1 evaluation row per task
SMOKE_SYNTH_SIZE = 30
SMOKE_ROWS_PER_TASK = 1
SMOKE_STEPS = 2
# A tiny CLAP (1 s windows at 16 kHz; HTSAT on a 64 × 64 spectrogram → 32 tokens of 128 per window)
# ----------------------------------------------------------------------------------------------------------------------
# Recipes
# ----------------------------------------------------------------------------------------------------------------------


def base_recipe(smoke: bool = False, stage_seconds: float | None = None) -> dict:
    """
    `pal_synth.yaml` as the study runs it: Trainer checkpoints off (a killed run restarts from scratch; the
    `max_seconds` budget would not survive a resume anyway). Smoke: 2 steps per stage, small batches, no workers.
    `stage_seconds` replaces every stage's `max_seconds`.
    """
    recipe = load_recipe(BASE_RECIPE)
    recipe["training"] = {**recipe.get("training", {}), "save_strategy": "no"}
    for stage in recipe["stages"]:
        if stage_seconds is not None:
            stage["max_seconds"] = stage_seconds
        if smoke:
            stage["args"] = {**stage.get("args", {}), "max_steps": SMOKE_STEPS}
    if smoke:
        recipe["training"].update(per_device_train_batch_size=4, dataloader_num_workers=0, logging_steps=1)
        recipe["data"] = {**recipe.get("data", {}), "max_length": 256}
    return recipe


def derive_recipe(base: dict, variant: str, seed: int) -> dict:
    """The base recipe with the variant's encoders, integration, config and stage 2-3 groups, and `seed`."""
    spec = VARIANTS[variant]
    recipe = copy.deepcopy(base)
    recipe["name"] = f"reproduce-{variant}-seed{seed}"
    recipe["seed"] = seed
    model = recipe.setdefault("model", {})
    encoders = model.get("audio_encoders", {})
    missing = [name for name in spec.encoders if name not in encoders]
    if missing:
        raise ValueError(f"Variant {variant!r} needs encoders {missing}, which {BASE_RECIPE.name} does not list")
    model["audio_encoders"] = {name: encoders[name] for name in spec.encoders}
    model["integration"] = spec.integration
    config = {**model.get("config", {}), **spec.config}
    if spec.integration == "plits":  # no encoder uses LAL: a LAL layer setting would be inconsistent
        config = {key: value for key, value in config.items() if key not in ("lal_start_layer", "lal_layers")}
    model["config"] = config
    if spec.later_stages_train is not None:
        for stage in recipe["stages"][1:]:
            stage["train"] = list(spec.later_stages_train)
    return load_recipe(recipe)


def protocol_fingerprint(base: dict, evaluation: dict, components: Path, data: Path, smoke: bool) -> str:
    """
    A digest of what makes runs comparable: the base recipe (paths aside), the evaluation settings, the variant
    definitions, the components' manifest (re-pretrained components make earlier runs incomparable) and the PAL-Synth
    version of the data (a newer generator gives other rows; `None` for data saved before versions were recorded).
    """
    base = {key: value for key, value in base.items() if key not in ("seed", "name", "components")}
    base["data"] = {key: value for key, value in base.get("data", {}).items() if key != "dataset"}
    manifest = Path(components, "manifest.json")
    payload = {
        "recipe": base,
        "evaluation": evaluation,
        "variants": {name: vars(spec) for name, spec in VARIANTS.items()},
        "components": hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.is_file() else None,
        "smoke": smoke,
    }
    data_version = pal_synth_version(load_from_disk(str(data)))
    if data_version is not None:  # runs on data saved before versions keep the digest they were recorded with
        payload["pal_synth_version"] = data_version
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def evaluation_settings(rows_per_task: int) -> dict:
    return {
        "splits": list(EVAL_SPLITS),
        "rows_per_task": rows_per_task,
        "subset_seed": SUBSET_SEED,
        "max_new_tokens": MAX_NEW_TOKENS,
    }


# ----------------------------------------------------------------------------------------------------------------------
# Smoke inputs
# ----------------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _building(target: Path):
    """A fresh temporary directory next to `target`, renamed to `target` when the block completes, removed if not."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-building-", dir=target.parent))
    try:
        yield tmp
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _current(data: Path) -> bool:
    """Whether `data` holds a finished PAL-Synth build of this `PAL_SYNTH_VERSION`."""
    try:
        dataset = load_from_disk(str(data))
    except Exception:  # noqa: BLE001 - any failure to load means: not a finished build
        return False
    return set(EVAL_SPLITS) | {"train"} <= set(dataset) and pal_synth_version(dataset) == PAL_SYNTH_VERSION


def build_smoke_inputs(directory: Path) -> tuple[Path, Path]:
    """A tiny PAL-Synth (`directory/data`) and tiny random components llm / whisper / clap (`directory/components`)."""
    data, components = directory / "data", directory / "components"
    # Each is built in a temporary sibling and renamed into place: a run killed half-way leaves no directory that a
    # later run would take for a finished one.
    # left incomplete by a run of an earlier version (built in place), or built by another PAL-Synth version: rebuilt,
    # with the components trained on it
    stale = data.is_dir() and not _current(data)
    if stale:
        shutil.rmtree(data)
    if components.is_dir() and (stale or not (components / "clap" / "preprocessor_config.json").is_file()):
        shutil.rmtree(components)
    if not data.is_dir():
        with _building(data) as tmp:
            build_pal_synth(SMOKE_SYNTH_SIZE, seed=0).save_to_disk(str(tmp))
    if not components.is_dir():
        with _building(components) as tmp:
            build_tiny_components(load_from_disk(str(data))["train"], tmp, seed=0)
            torch.manual_seed(0)
            save_tiny_clap(tmp / "clap")
    return data, components


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation subset and scoring
# ----------------------------------------------------------------------------------------------------------------------


def evaluation_subset(dataset: DatasetDict, rows_per_task: int) -> dict[str, list[int]]:
    """
    Row indices per evaluation split: up to `rows_per_task` rows of every task, drawn with a fixed seed (the same rows
    for every variant and seed), in the split's order.
    """
    subset = {}
    for split in EVAL_SPLITS:
        tasks = dataset[split]["task"]
        order = np.random.default_rng([SUBSET_SEED, EVAL_SPLITS.index(split)]).permutation(len(tasks))
        chosen: dict[str, list[int]] = {}
        for index in order.tolist():
            picked = chosen.setdefault(tasks[index], [])
            if len(picked) < rows_per_task:
                picked.append(index)
        subset[split] = sorted(index for picked in chosen.values() for index in picked)
    return subset


def caption_scores(rows: list[dict], predictions: list[str]) -> dict:
    """CIDEr-D and ROUGE-L (pycocoevalcap) on `normalize_text` tokens: no Java (METEOR/PTB cost ~10 s a call)."""
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gold = {i: [normalize_text(row["answer"])] for i, row in enumerate(rows)}
    candidates = {i: [normalize_text(prediction)] for i, prediction in enumerate(predictions)}
    cider_d, _ = Cider().compute_score(gold, candidates)
    rouge_l, _ = Rouge().compute_score(gold, candidates)
    return {"count": len(rows), "cider_d": float(cider_d), "rouge_l": float(rouge_l)}


def _jsonable(value):
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def evaluate_split(model, processor, rows, batch_size: int = 16) -> tuple[dict, list[dict]]:
    """Greedy answers (per task, with the task's answer length) and per-task metrics of one split's subset."""
    by_task: dict[str, list[int]] = {}
    for index in range(len(rows)):
        by_task.setdefault(rows[index]["task"], []).append(index)
    metrics, predictions = {}, []
    for task, indices in sorted(by_task.items()):
        task_rows = [rows[i] for i in indices]
        answers = generate_answers(
            model, processor, task_rows, batch_size=batch_size, max_new_tokens=MAX_NEW_TOKENS.get(task, 28)
        )
        if task in CAPTION_TASKS:
            metrics[task] = caption_scores(task_rows, answers)
        else:
            metrics.update(score_predictions(task_rows, answers))
        predictions += [{"id": row["id"], "task": task, "prediction": a} for row, a in zip(task_rows, answers)]
    return _jsonable(metrics), predictions


# ----------------------------------------------------------------------------------------------------------------------
# One run
# ----------------------------------------------------------------------------------------------------------------------


class StepTimer(TrainerCallback):
    """Wall time of every optimizer step (forward, backward, optimizer; the batch is already loaded), per stage."""

    def __init__(self):
        self.stages: list[list[float]] = []
        self._start = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.stages.append([])

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._start is not None:
            self.stages[-1].append(time.perf_counter() - self._start)
            self._start = None


def components_summary(components: Path) -> dict | None:
    """The numeric metrics of the components' `manifest.json` (pretrain_components), non-finite values as null."""
    manifest = Path(components, "manifest.json")
    if not manifest.is_file():
        return None
    metrics = json.loads(manifest.read_text()).get("metrics", {})
    summary = {}
    for name, values in metrics.items():
        if isinstance(values, dict):
            summary[name] = {
                key: (value if math.isfinite(value) else None)
                for key, value in values.items()
                if isinstance(value, (int, float)) and not isinstance(value, bool)
            }
    return summary


def environment() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _stage_records(recipe: dict, results, timer: StepTimer) -> list[dict]:
    records = []
    for stage, result, times in zip(recipe["stages"], results, timer.stages):
        max_steps = stage.get("args", {}).get("max_steps", recipe.get("training", {}).get("max_steps"))
        losses = [entry["loss"] for entry in result.log_history if "loss" in entry]
        records.append(
            {
                "name": result.name,
                "train": list(stage["train"]),
                "subset": stage.get("subset"),
                "max_steps": max_steps,
                "max_seconds": stage.get("max_seconds"),
                "steps": len(times),
                "stopped_by": "max_steps" if max_steps is not None and len(times) >= max_steps else "max_seconds",
                "seconds": result.seconds,
                "step_time_median_s": float(np.median(times)) if times else None,
                "step_times_s": times,
                "first_loss": losses[0] if losses else None,
                "final_loss": losses[-1] if losses else None,
                "trainable": result.trainable,
            }
        )
    return records


def _model_summary(model) -> dict:
    config = model.config
    return {
        "encoders": {entry["name"]: entry["integration"] for entry in config.audio_encoders},
        "lal_layers": list(config.lal_layers),
        "num_layers": config.text_config.num_hidden_layers,
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
    }


def run_one(
    variant: str,
    seed: int,
    *,
    base: dict,
    components: Path,
    data: Path,
    rows_per_task: int,
    work_dir: Path,
    protocol: str,
    smoke: bool,
    keep_checkpoints: bool = False,
) -> dict:
    """Trains one (variant, seed) from `components` with the derived recipe and evaluates it; returns its record."""
    start = time.perf_counter()
    recipe = derive_recipe(base, variant, seed)
    record = {
        "schema_version": SCHEMA_VERSION,
        "kind": "pal-reproduce-run",
        "variant": variant,
        "seed": seed,
        "status": "error",
        "error": None,
        "smoke": smoke,
        "protocol": protocol,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "description": VARIANTS[variant].description,
        "recipe": recipe,
        "components": str(components),
        "components_metrics": components_summary(components),
        "data": str(data),
        "pal_synth_version": pal_synth_version(load_from_disk(str(data))),
        "environment": environment(),
    }
    run_dir = work_dir / f"{variant}-seed{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)  # an unfinished run starts again from scratch
    try:
        timer = StepTimer()
        result = run_curriculum(recipe, run_dir, components=components, data=data, callbacks=[timer])
        record["model"] = _model_summary(result.model)
        stages = _stage_records(recipe, result.stages, timer)
        all_steps = [t for stage in stages for t in stage["step_times_s"]]
        record["training"] = {
            "seconds": sum(stage["seconds"] for stage in stages),
            "step_time_median_s": float(np.median(all_steps)) if all_steps else None,
            "batch_size": recipe.get("training", {}).get("per_device_train_batch_size"),
            "stages": stages,
        }
        evaluation_start = time.perf_counter()
        model = result.model.eval()
        dataset = load_from_disk(str(data))
        subset = evaluation_subset(dataset, rows_per_task)
        splits, predictions = {}, {}
        for split in EVAL_SPLITS:
            rows = dataset[split].select(subset[split])
            audio = rows.features["audio"]
            rows = rows.cast_column("audio", Audio(sampling_rate=audio.sampling_rate, decode=False))
            with torch.inference_mode():
                splits[split], predictions[split] = evaluate_split(model, result.processor, rows)
        record["evaluation"] = {
            "rows_per_task": rows_per_task,
            "seconds": time.perf_counter() - evaluation_start,
            "splits": splits,
            "row_ids": {split: [p["id"] for p in predictions[split]] for split in EVAL_SPLITS},
            "predictions": predictions,
        }
        record["scores"] = run_scores(splits)
        record["status"] = "ok"
    except Exception as error:  # recorded, and retried by a rerun
        record["error"] = f"{type(error).__name__}: {error}\n{traceback.format_exc()[-4000:]}"
        print(record["error"], file=sys.stderr)
    finally:
        if not keep_checkpoints:
            shutil.rmtree(run_dir, ignore_errors=True)
    record["wall_s"] = time.perf_counter() - start
    record["environment"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return record
