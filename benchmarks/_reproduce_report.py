"""
The report side of `reproduce.py`: the run JSON schema (and a dependency-free validator), per-run scores, the
aggregation over seeds, the verdict rule for each of the paper's claims, and `docs/results.md`. No torch import.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 1
CHOICE_TASKS = ("classification", "speech_detection", "language_id", "temporal_order", "counting")
CAPTION_TASKS = ("captioning", "open_qa")
TRANSCRIPTION_TASKS = ("transcription",)
GENERAL_AUDIO_TASKS = ("classification", "counting", "temporal_order", "captioning", "open_qa")
SPEECH_TASKS = ("speech_detection", "language_id", "transcription")
TASK_ORDER = (*GENERAL_AUDIO_TASKS, *SPEECH_TASKS)
SCORES = ("overall", "general_audio", "speech")
VARIANT_ORDER = ("plits", "lal", "pal", "hybrid", "lal_layer0", "lal_frozen_ffn", "lal_clap")

# Decision rule (see `verdict`)
MIN_SEEDS = 2
MIN_EFFECT = 0.01  # floor of the threshold on a [0, 1] score: identical runs do not make a 0.001 gap "significant"
PARITY_MARGIN = 0.05  # parity / non-inferiority needs the noise (threshold) at most this large
COST_FLOOR = 0.02
RUN_LIMIT_S = 240  # a (variant, seed) run should fit in 4 minutes; longer ones are flagged ⚠ in the runs table  # relative: a step-time gap under 2 % is not a cost difference

# ----------------------------------------------------------------------------------------------------------------------
# Run JSON schema (a JSON-Schema subset: type, enum, required, properties, items, additionalProperties)
# ----------------------------------------------------------------------------------------------------------------------

NUM = {"type": "number"}
NUM_OR_NULL = {"type": ["number", "null"]}
INT = {"type": "integer"}
STR = {"type": "string"}
TASK_METRICS = {
    "type": "object",
    "required": ["count"],
    "properties": {
        "count": INT,
        "accuracy": NUM,
        "chance": NUM_OR_NULL,
        "unparsed": INT,
        "wer": NUM,
        "cer": NUM,
        "cider_d": NUM,
        "rouge_l": NUM,
    },
}
STAGE = {
    "type": "object",
    "required": [
        "name",
        "train",
        "max_steps",
        "max_seconds",
        "steps",
        "stopped_by",
        "seconds",
        "step_time_median_s",
        "step_times_s",
        "final_loss",
        "trainable",
    ],
    "properties": {
        "name": STR,
        "train": {"type": "array", "items": STR},
        "max_steps": {"type": ["integer", "null"]},
        "max_seconds": NUM_OR_NULL,
        "steps": INT,
        "stopped_by": {"enum": ["max_steps", "max_seconds"]},
        "seconds": NUM,
        "step_time_median_s": NUM_OR_NULL,
        "step_times_s": {"type": "array", "items": NUM},
        "first_loss": NUM_OR_NULL,
        "final_loss": NUM_OR_NULL,
        "trainable": {"type": "object", "additionalProperties": INT},
    },
}
SCORE_BLOCK = {
    "type": "object",
    "required": ["value", "chance", "tasks"],
    "properties": {"value": NUM_OR_NULL, "chance": NUM_OR_NULL, "tasks": {"type": "array", "items": STR}},
}
RUN_SCHEMA = {
    "type": "object",
    "required": [
        "schema_version",
        "kind",
        "variant",
        "seed",
        "status",
        "error",
        "smoke",
        "protocol",
        "created",
        "description",
        "recipe",
        "components",
        "data",
        "environment",
        "wall_s",
    ],
    "properties": {
        "schema_version": {"enum": [SCHEMA_VERSION]},
        "kind": {"enum": ["pal-reproduce-run"]},
        "variant": STR,
        "seed": INT,
        "status": {"enum": ["ok", "error"]},
        "error": {"type": ["string", "null"]},
        "smoke": {"type": "boolean"},
        "protocol": STR,
        "created": STR,
        "description": STR,
        "recipe": {"type": "object", "required": ["model", "stages", "seed"]},
        "components": STR,
        "components_metrics": {"type": ["object", "null"]},
        "data": STR,
        "pal_synth_version": {"type": ["string", "null"]},
        "environment": {
            "type": "object",
            "required": ["torch", "transformers", "threads", "cpu_count", "device"],
            "properties": {"threads": INT, "cpu_count": INT, "device": STR},
        },
        "wall_s": NUM,
        "model": {
            "type": "object",
            "required": ["encoders", "lal_layers", "num_layers", "parameters"],
            "properties": {
                "encoders": {"type": "object", "additionalProperties": {"enum": ["plits", "lal", "hybrid"]}},
                "lal_layers": {"type": "array", "items": INT},
                "num_layers": INT,
                "parameters": INT,
            },
        },
        "training": {
            "type": "object",
            "required": ["seconds", "step_time_median_s", "batch_size", "stages"],
            "properties": {
                "seconds": NUM,
                "step_time_median_s": NUM_OR_NULL,
                "batch_size": INT,
                "stages": {"type": "array", "items": STAGE},
            },
        },
        "evaluation": {
            "type": "object",
            "required": ["rows_per_task", "seconds", "splits", "row_ids", "predictions"],
            "properties": {
                "rows_per_task": INT,
                "seconds": NUM,
                "splits": {
                    "type": "object",
                    "additionalProperties": {"type": "object", "additionalProperties": TASK_METRICS},
                },
                "row_ids": {"type": "object", "additionalProperties": {"type": "array", "items": STR}},
                "predictions": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["id", "task", "prediction"],
                            "properties": {"id": STR, "task": STR, "prediction": STR},
                        },
                    },
                },
            },
        },
        "scores": {
            "type": "object",
            "required": [*SCORES, "per_task"],
            "properties": {
                **dict.fromkeys(SCORES, SCORE_BLOCK),
                "per_task": {"type": "object", "additionalProperties": NUM},
            },
        },
    },
}
# A finished ("ok") run also has these sections
OK_REQUIRED = ("model", "training", "evaluation", "scores")

TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "null": type(None),
}


def validate(value, schema: dict = RUN_SCHEMA, path: str = "$") -> list[str]:
    """Errors of `value` against `schema`; for the run schema, an "ok" run must also have `OK_REQUIRED`."""
    errors = []
    if "type" in schema:
        allowed = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        ok = any(
            isinstance(value, TYPES[name]) and not (name in ("integer", "number") and isinstance(value, bool))
            for name in allowed
        )
        if isinstance(value, float) and not math.isfinite(value):
            ok = False
        if not ok:
            return [f"{path}: expected {allowed}, got {type(value).__name__} {value!r:.60}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in {schema['enum']}")
    if isinstance(value, dict):
        errors += [f"{path}: missing {key!r}" for key in schema.get("required", []) if key not in value]
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                errors += validate(value[key], sub, f"{path}.{key}")
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in set(value) - set(schema.get("properties", {})):
                errors += validate(value[key], extra, f"{path}.{key}")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            errors += validate(item, schema["items"], f"{path}[{index}]")
    if schema is RUN_SCHEMA and isinstance(value, dict) and value.get("status") == "ok":
        errors += [f"{path}: an ok run lacks {key!r}" for key in OK_REQUIRED if key not in value]
    return errors


# ----------------------------------------------------------------------------------------------------------------------
# Scores of one run
# ----------------------------------------------------------------------------------------------------------------------


def task_quality(task: str, metrics: dict) -> tuple[float | None, float]:
    """
    A task's quality in [0, 1] and its chance level: accuracy (chance from the choices; 0 without choices) for
    closed tasks, 1 − WER (clipped at 0) for transcription, ROUGE-L for captions and open answers (chance 0).
    """
    if task in TRANSCRIPTION_TASKS:
        return max(0.0, 1.0 - metrics["wer"]), 0.0
    if task in CAPTION_TASKS:
        return metrics["rouge_l"], 0.0
    return metrics.get("accuracy"), metrics.get("chance") or 0.0


def run_scores(splits: dict[str, dict[str, dict]]) -> dict:
    """`overall` / `general_audio` / `speech`: means of `task_quality` over the (split, task) pairs of the group."""
    per_task, chance = {}, {}
    for split, tasks in splits.items():
        for task, metrics in tasks.items():
            value, level = task_quality(task, metrics)
            if value is not None:
                per_task[f"{split}/{task}"], chance[f"{split}/{task}"] = float(value), float(level)
    groups = {"overall": TASK_ORDER, "general_audio": GENERAL_AUDIO_TASKS, "speech": SPEECH_TASKS}
    scores = {}
    for name, tasks in groups.items():
        keys = [key for key in per_task if key.split("/", 1)[1] in tasks]
        scores[name] = {
            "value": statistics.fmean(per_task[k] for k in keys) if keys else None,
            "chance": statistics.fmean(chance[k] for k in keys) if keys else None,
            "tasks": keys,
        }
    scores["per_task"] = per_task
    return scores


# ----------------------------------------------------------------------------------------------------------------------
# Aggregation over seeds and verdicts
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class Stat:
    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if self.n >= 2 else None

    def show(self, digits: int = 3, seeds: bool = False) -> str:
        if not self.values:
            return "—"
        text = f"{self.mean:.{digits}f}" + (f" ± {self.std:.{digits}f}" if self.std is not None else "")
        return text + (f" (n={self.n})" if seeds else "")


def load_runs(directory: Path) -> tuple[list[dict], list[str]]:
    """The run JSONs of `directory` (sorted by variant and seed) and the problems of files that do not validate."""
    runs, problems = [], []
    for path in sorted(Path(directory).glob("*.json")):
        try:
            run = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            problems.append(f"{path.name}: not JSON ({error})")
            continue
        errors = validate(run)
        if errors:
            problems.append(f"{path.name}: {errors[0]}" + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""))
            continue
        run["_file"] = path.name
        runs.append(run)
    return runs, problems


def select_runs(runs: list[dict]) -> tuple[dict[str, list[dict]], list[dict], str | None]:
    """
    The finished runs of the newest finished run's protocol (e.g. after the components were pretrained again), by
    variant (one per seed); also the runs left out (failed, or another protocol) and that protocol.
    """
    finished = sorted((run for run in runs if run["status"] == "ok"), key=lambda run: run["created"])
    protocol = finished[-1]["protocol"] if finished else None
    by_variant: dict[str, list[dict]] = {}
    left_out = []
    for run in runs:
        if run["status"] != "ok" or run["protocol"] != protocol:
            left_out.append(run)
            continue
        by_variant.setdefault(run["variant"], []).append(run)
    for variant in by_variant:
        by_variant[variant].sort(key=lambda run: run["seed"])
    return by_variant, left_out, protocol


def score_stat(runs: list[dict], name: str) -> Stat:
    return Stat([run["scores"][name]["value"] for run in runs if run["scores"][name]["value"] is not None])


def task_stat(runs: list[dict], key: str) -> Stat:
    return Stat([run["scores"]["per_task"][key] for run in runs if key in run["scores"]["per_task"]])


def step_stat(runs: list[dict]) -> Stat:
    return Stat([run["training"]["step_time_median_s"] for run in runs if run["training"]["step_time_median_s"]])


def pooled_std(a: Stat, b: Stat) -> float | None:
    if a.n < 2 or b.n < 2:
        return None
    return math.sqrt(((a.n - 1) * a.std**2 + (b.n - 1) * b.std**2) / (a.n + b.n - 2))


@dataclass(frozen=True)
class Claim:
    key: str
    text: str
    a: str  # the variant the claim favours
    b: str
    score: str
    kind: str  # "better": a > b; "at_least": a ≥ b (non-inferiority, parity)
    cost: bool = False  # also: a trains faster than b


CLAIMS = (
    Claim("lal_vs_plits", "LAL ≥ PLITS on general-audio tasks", "lal", "plits", "general_audio", "at_least"),
    Claim("pal_vs_plits", "PAL ≈ PLITS-ensemble at lower cost", "pal", "plits", "overall", "at_least", cost=True),
    Claim("delayed", "Delayed integration helps (LAL from `lal_start_layer` vs from layer 0)", "lal", "lal_layer0", "overall", "better"),
    Claim("frozen_ffn", "FFN adaptation is not needed for LAL (frozen-FFN ablation)", "lal_frozen_ffn", "lal", "overall", "at_least"),
    Claim("ensemble", "An encoder ensemble beats a single encoder (Whisper + CLAP vs CLAP, both LAL)", "lal", "lal_clap", "overall", "better"),
)  # fmt: skip
RULE = (
    f"With d = mean(A) − mean(B) over seeds and T = max(pooled std of the two variants' per-seed scores, {MIN_EFFECT}):"
    " a claim that A beats B is **reproduced** when d > T, **not reproduced** when d < −T, and **inconclusive at this"
    " scale** otherwise; a claim that A is at least on par with B is **reproduced** when d ≥ −T and T ≤"
    f" {PARITY_MARGIN} (the noise is small enough for parity to mean something), **not reproduced** when d < −T, and"
    f" inconclusive otherwise. Every comparison needs ≥ {MIN_SEEDS} finished seeds per variant, and at least one of"
    " the two variants must beat the score's chance level by more than T (else: inconclusive, nothing was learned)."
    " The cost half of the PAL claim applies the same superiority rule to the measured training step time (median"
    f" per run; T = max(pooled std, {COST_FLOOR:.0%} of PLITS's mean))."
)


def compare(a: Stat, b: Stat, kind: str, chance: float | None = None, floor: float = MIN_EFFECT) -> dict:
    """The decision rule (`RULE`) for A vs B; returns the verdict, the numbers and a one-line reason."""
    result = {"a": a.mean, "b": b.mean, "n_a": a.n, "n_b": b.n, "diff": None, "threshold": None}
    if a.n < MIN_SEEDS or b.n < MIN_SEEDS:
        return {**result, "verdict": "inconclusive", "reason": f"fewer than {MIN_SEEDS} finished seeds"}
    diff = a.mean - b.mean
    threshold = max(pooled_std(a, b), floor)
    result.update(diff=diff, threshold=threshold)
    if chance is not None and max(a.mean, b.mean) - chance <= threshold:
        return {**result, "verdict": "inconclusive", "reason": f"neither variant beats chance ({chance:.3f}) by > T"}
    if diff < -threshold:
        return {**result, "verdict": "not reproduced", "reason": "B is ahead by more than T"}
    if kind == "better":
        if diff > threshold:
            return {**result, "verdict": "reproduced", "reason": "A is ahead by more than T"}
        return {**result, "verdict": "inconclusive", "reason": "|d| ≤ T"}
    if threshold <= PARITY_MARGIN:
        return {**result, "verdict": "reproduced", "reason": f"d ≥ −T and T ≤ {PARITY_MARGIN}"}
    return {**result, "verdict": "inconclusive", "reason": f"T > {PARITY_MARGIN}: too noisy to call parity"}


def claim_verdicts(by_variant: dict[str, list[dict]]) -> list[dict]:
    verdicts = []
    for claim in CLAIMS:
        runs_a, runs_b = by_variant.get(claim.a, []), by_variant.get(claim.b, [])
        chances = [run["scores"][claim.score]["chance"] for run in runs_a + runs_b]
        chance = statistics.fmean(chances) if chances and None not in chances else None
        quality = compare(score_stat(runs_a, claim.score), score_stat(runs_b, claim.score), claim.kind, chance)
        entry = {"claim": claim, "quality": quality, "cost": None, "verdict": quality["verdict"]}
        if claim.cost:
            # lower step time is better: compare B's time against A's (A favoured when A is faster)
            step_a, step_b = step_stat(runs_a), step_stat(runs_b)
            floor = COST_FLOOR * step_b.mean if step_b.mean else MIN_EFFECT
            cost = compare(step_b, step_a, "better", floor=floor)
            cost.update(a=step_a.mean, b=step_b.mean, diff=None if cost["diff"] is None else -cost["diff"])
            entry["cost"] = cost
            verdicts_pair = {quality["verdict"], cost["verdict"]}
            if "not reproduced" in verdicts_pair:
                entry["verdict"] = "not reproduced"
            elif verdicts_pair == {"reproduced"}:
                entry["verdict"] = "reproduced"
            else:
                entry["verdict"] = "inconclusive"
        verdicts.append(entry)
    return verdicts


# ----------------------------------------------------------------------------------------------------------------------
# Efficiency (benchmarks/efficiency.py results)
# ----------------------------------------------------------------------------------------------------------------------

# Our variant → the efficiency benchmark's variant with the same LLM-side audio path (≈: approximately the same)
EFFICIENCY_VARIANT = {
    "plits": ("pal_plits", "="),
    "pal": ("pal", "="),
    "hybrid": ("hybrid", "="),
    "lal": ("lal", "≈"),
    "lal_layer0": ("lal", "≈"),
    "lal_frozen_ffn": ("lal", "≈"),
    "lal_clap": ("lal", "≈"),
}
EFFICIENCY_NA = 500
MANIFEST_COUNTS = {"held_out_tokens", "vocab_size", "train_clips", "held_out_clips", "candidates"}  # not shown


def efficiency_rows(path: Path) -> tuple[dict[str, dict], str | None]:
    """The efficiency benchmark's per-point medians at Na = 500 (else its smallest Na), by its variant name."""
    if not path.is_file():
        return {}, None
    try:
        results = json.loads(path.read_text())
        per_point = results["summary"]["per_point"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return {}, None
    nas = sorted({row["na"] for row in per_point})
    if not nas:
        return {}, None
    na = EFFICIENCY_NA if EFFICIENCY_NA in nas else nas[0]
    rows = {row["variant"]: row for row in per_point if row["na"] == na and row.get("status") == "ok"}
    shape = results.get("settings", {}).get("shape_name", "?")
    note = f"`{path.name}` (mode {results.get('mode', '?')}, shape `{shape}`, Na = {na}, batch {rows and next(iter(rows.values()))['batch']})"
    return rows, note


# ----------------------------------------------------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------------------------------------------------


def _fmt(value, digits: int = 3, suffix: str = "") -> str:
    if value is None:
        return "—"
    return f"{value:.{digits}f}{suffix}"


def _ratio(a, b) -> float | None:
    return a / b if a and b else None


def _signed(value, digits: int = 3) -> str:
    return "—" if value is None else f"{value:+.{digits}f}"


def caveat(runs: list[dict]) -> str:
    """The scale caveat, with the model size of the runs it describes."""
    layers = sorted({run["model"]["num_layers"] for run in runs})
    params = [run["model"]["parameters"] / 1e6 for run in runs]
    size = (
        f"a {'/'.join(map(str, layers))}-layer Llama-style LLM; {min(params):.1f}–{max(params):.1f} M parameters with"
        " the encoders and connectors"
        if runs
        else "a 6-layer, 256-wide Llama-style LLM with a small Whisper and a small CLAP"
    )
    return (
        "> **Scale caveat — read this first.** These numbers come from *tiny* models"
        f" ({size}; the components are pretrained for a minute or two each by"
        " `python -m modeling_pal.data.pretrain_components`), *synthetic* data (PAL-Synth: tones, chirps, noise,"
        f" melodies and espeak-ng speech; 3 000 training rows; {data_version(runs)}), on a *CPU* (2 shared cores),"
        " with *time-limited*"
        " curriculum stages of under a minute each and evaluation on a fixed subset of a few rows per task. The paper"
        " trains 1–3 B-parameter LLMs on 5.6 M real audio-text pairs on GPUs. A verdict here says whether the paper's"
        " qualitative claim shows up in this controlled toy setting; it neither confirms nor refutes the paper's"
        " numbers. With few evaluation rows and 3 seeds, many comparisons are expected to be *inconclusive at this"
        " scale*."
    )


def data_version(runs: list[dict]) -> str:
    """The PAL-Synth version(s) of the runs' data, and what a build from before versions differs in."""
    versions = sorted({run.get("pal_synth_version") or "before 2.0.0" for run in runs}) or ["—"]
    text = f"PAL-Synth version {', '.join(versions)}"
    if "before 2.0.0" in versions:
        text += (
            ": its rising and falling melodies went both ways and its captioning rows were open-ended, so trained"
            " only in stage 3"
        )
    return text


RUN_FILES = """## Run files (schema version 1)

One JSON per (variant, seed), `<variant>-seed<seed>.json`, written atomically when the run ends (validated against
`_reproduce_report.RUN_SCHEMA`; a rerun skips a file that validates, has `status: "ok"` and the same protocol and
recipe, and reruns anything else):

```text
schema_version 1;  kind "pal-reproduce-run";  variant, seed, description
status         "ok" | "error";  error: null or the exception and traceback tail
smoke          true for --smoke runs (tiny random components)
protocol       digest of the base recipe, evaluation settings, variant definitions, components' manifest and
               the data's PAL-Synth version: only runs of the newest finished run's protocol are aggregated
created, wall_s, components, data (paths), components_metrics (numbers of the components' manifest.json),
pal_synth_version  the data's PAL_SYNTH_VERSION (null: saved before versions; runs written before it lack it)
               environment {python, torch, transformers, platform, cpu_count,
               threads, device, load_average, load_average_end}
recipe         the derived recipe run_curriculum ran (model, data, training, stages, lora, seed, name)
model          encoders {name: plits | lal | hybrid}, lal_layers, num_layers, parameters      (ok runs)
training       seconds, step_time_median_s (all steps of all stages), batch_size,
               stages[]: name, train (groups), subset, max_steps, max_seconds, steps, stopped_by
                         ("max_steps" | "max_seconds"), seconds, step_time_median_s, step_times_s[],
                         first_loss, final_loss, trainable {group: parameters}
evaluation     rows_per_task, seconds, splits {split: {task: {count, accuracy, chance, unparsed | wer, cer |
               cider_d, rouge_l}}}, row_ids {split: [id]}, predictions {split: [{id, task, prediction}]}
scores         overall / general_audio / speech: {value, chance, tasks ["split/task"]};
               per_task {"split/task": quality in [0, 1]}   (recomputable from evaluation.splits)
```
"""


def markdown(
    by_variant: dict[str, list[dict]],
    left_out: list[dict],
    protocol: str | None,
    problems: list[str],
    efficiency: tuple[dict[str, dict], str | None],
    command: str,
    results_dir: str = "benchmarks/results/reproduce",
) -> str:
    runs = [run for variant_runs in by_variant.values() for run in variant_runs]
    smoke = any(run["smoke"] for run in runs)
    variants = [v for v in VARIANT_ORDER if v in by_variant] + sorted(set(by_variant) - set(VARIANT_ORDER))
    seeds = sorted({run["seed"] for run in runs})
    lines = ["# Reproducing the paper's claims on PAL-Synth", "", caveat(runs), ""]
    if smoke:
        lines += ["> **Smoke run**: tiny *random* components and a 30-row PAL-Synth, 2 steps per stage. "
                  "The numbers below only show that the pipeline works.", ""]  # fmt: skip
    lines += [
        f"Generated by `benchmarks/reproduce.py` from the run files in `{results_dir}/` "
        "(`--report-only` rebuilds this page). The claims are those of PAL (arXiv 2506.10423): LAL vs PLITS, the PAL "
        "ensemble, delayed integration, the frozen-FFN ablation and the encoder ensemble.",
        "",
        f"Finished runs: **{len(runs)}** ({', '.join(f'{v}: {len(by_variant[v])}' for v in variants) or 'none'}); "
        f"seeds {', '.join(map(str, seeds)) or '—'}; protocol `{protocol or '—'}`.",
        "",
        *(
            [f"**No finished runs yet**: every verdict below is a placeholder. Start the study with `{command}`.", ""]
            if not runs
            else []
        ),
        "## Verdicts",
        "",
        RULE,
        "",
        "| claim | A vs B | score | A | B | d = A − B | T | verdict |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    verdicts = claim_verdicts(by_variant)
    for entry in verdicts:
        claim, quality = entry["claim"], entry["quality"]
        stat_a = score_stat(by_variant.get(claim.a, []), claim.score)
        stat_b = score_stat(by_variant.get(claim.b, []), claim.score)
        lines.append(
            f"| {claim.text} | `{claim.a}` vs `{claim.b}` | {claim.score} | {stat_a.show(seeds=True)} | "
            f"{stat_b.show(seeds=True)} | {_signed(quality['diff'])} | {_fmt(quality['threshold'])} | "
            f"**{entry['verdict']}** |"
        )
    lines += [""]
    for entry in verdicts:
        claim, quality, cost = entry["claim"], entry["quality"], entry["cost"]
        text = (
            f"- **{claim.text}: {entry['verdict']}.** {claim.score} score `{claim.a}` {_fmt(quality['a'])} vs "
            f"`{claim.b}` {_fmt(quality['b'])} (n = {quality['n_a']} / {quality['n_b']}), d = {_signed(quality['diff'])},"
            f" T = {_fmt(quality['threshold'])}: {quality['verdict']} ({quality['reason']})."
        )
        if cost is not None:
            ratio = cost["a"] / cost["b"] if cost["a"] and cost["b"] else None
            text += (
                f" Cost: training step `{claim.a}` {_fmt(cost['a'], 3, ' s')} vs `{claim.b}` {_fmt(cost['b'], 3, ' s')}"
                f" (ratio {_fmt(ratio, 2)}): {cost['verdict']} ({cost['reason']})."
            )
            rows = efficiency[0]
            if rows.get("pal") and rows.get("pal_plits"):
                step = _ratio(rows["pal"].get("llm_step_s"), rows["pal_plits"].get("llm_step_s"))
                memory = _ratio(rows["pal"].get("activation_bytes"), rows["pal_plits"].get("activation_bytes"))
                text += (
                    f" Efficiency benchmark (`pal` vs `pal_plits`, same two encoders): LLM-side step ratio"
                    f" {_fmt(step, 2)}, activation memory ratio {_fmt(memory, 2)}."
                )
        lines.append(text)
    lines += ["", "Scores: `overall` is the mean over every (split, task) of the task's quality in [0, 1]: accuracy for",
              "closed tasks, 1 − WER (clipped at 0) for transcription, ROUGE-L for captioning and open QA; `general_audio`",
              f"averages {', '.join(GENERAL_AUDIO_TASKS)}; `speech` averages {', '.join(SPEECH_TASKS)}. Chance levels:",
              "1 / number of choices for multiple-choice tasks, 0 elsewhere.", ""]  # fmt: skip

    if runs:
        lines += _quality_tables(by_variant, variants)
        lines += _efficiency_table(by_variant, variants, efficiency)
    lines += _protocol_section(by_variant, variants, command)
    if runs or left_out or problems:
        lines += _runs_section(by_variant, variants, left_out, problems)
    lines += [RUN_FILES]
    return "\n".join(lines)


def _quality_tables(by_variant, variants) -> list[str]:
    lines = ["## Quality per task (mean ± std over seeds)", ""]
    lines += ["| variant | seeds | overall | general_audio | speech |", "|---|---:|---:|---:|---:|"]
    for variant in variants:
        runs = by_variant[variant]
        cells = [score_stat(runs, name).show() for name in SCORES]
        lines.append(f"| `{variant}` | {len(runs)} | " + " | ".join(cells) + " |")
    lines.append("")
    keys = {key for runs in by_variant.values() for run in runs for key in run["scores"]["per_task"]}
    for split in ("test", "test_compositional"):
        split_keys = [f"{split}/{task}" for task in TASK_ORDER if f"{split}/{task}" in keys]
        if not split_keys:
            continue
        rows_per_task = {
            key.split("/", 1)[1]: run["evaluation"]["splits"][split][key.split("/", 1)[1]]["count"]
            for runs in by_variant.values()
            for run in runs
            for key in split_keys
            if key.split("/", 1)[1] in run["evaluation"]["splits"].get(split, {})
        }
        header = [f"{k.split('/', 1)[1]} ({rows_per_task.get(k.split('/', 1)[1], '?')})" for k in split_keys]
        lines += [
            f"**{split}** (rows per task in parentheses; accuracy, 1 − WER for transcription, ROUGE-L for captions)",
            "",
            "| variant | " + " | ".join(header) + " |",
            "|---|" + "---:|" * len(split_keys),
        ]
        for variant in variants:
            lines.append(
                f"| `{variant}` | " + " | ".join(task_stat(by_variant[variant], k).show() for k in split_keys) + " |"
            )
        lines.append("")
    # CIDEr-D beside ROUGE-L for the caption tasks
    caption_keys = [
        (split, task)
        for split in ("test", "test_compositional")
        for task in CAPTION_TASKS
        if f"{split}/{task}" in keys
    ]
    if caption_keys:
        lines += ["CIDEr-D (same caption rows):", "", "| variant | " + " | ".join(f"{s}/{t}" for s, t in caption_keys) + " |",
                  "|---|" + "---:|" * len(caption_keys)]  # fmt: skip
        for variant in variants:
            cells = []
            for split, task in caption_keys:
                values = [
                    run["evaluation"]["splits"][split][task]["cider_d"]
                    for run in by_variant[variant]
                    if task in run["evaluation"]["splits"].get(split, {})
                ]
                cells.append(Stat(values).show())
            lines.append(f"| `{variant}` | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _efficiency_table(by_variant, variants, efficiency) -> list[str]:
    rows, note = efficiency
    lines = ["## Efficiency beside quality", ""]
    lines += [
        "Measured in these runs: the median wall time of an optimizer step (forward with the frozen encoders, backward,"
        " AdamW; the batch already loaded), over every step of the three stages, mean ± std over seeds; and the steps"
        " each stage completed within its budget (mean over seeds). Under time-limited stages a faster variant"
        " completes more steps: the comparison is at equal wall-clock budget whenever a stage stops on `max_seconds`.",
        "",
    ]
    if note:
        lines += [
            f"From the efficiency benchmark {note}: LLM-side training step and activation memory (bytes saved for"
            " backward) of the benchmark variant with the same LLM-side audio path (`=`) or the closest one (`≈`: its"
            " `lal` is one Whisper encoder via LAL; ours may add CLAP, start at another layer or freeze the FFNs).",
            "",
        ]
    else:
        lines += [
            "`benchmarks/results/efficiency-quick.json` was not found: run `benchmarks/efficiency.py --quick`.",
            "",
        ]
    header = "| variant | seeds | train step (s) | steps per stage | stopped on time | eval (s) | run (s) |"
    if note:
        header += " bench. variant | LLM-side step (s) | activation (MB) |"
    lines += [header, "|---|---:|---:|---|---:|---:|---:|" + ("---|---:|---:|" if note else "")]
    for variant in variants:
        runs = by_variant[variant]
        stage_count = len(runs[0]["training"]["stages"]) if runs else 0
        steps = [statistics.fmean(run["training"]["stages"][i]["steps"] for run in runs) for i in range(stage_count)]
        timed = sum(stage["stopped_by"] == "max_seconds" for run in runs for stage in run["training"]["stages"])
        total = sum(len(run["training"]["stages"]) for run in runs)
        line = (
            f"| `{variant}` | {len(runs)} | {step_stat(runs).show()} | {' / '.join(f'{s:.0f}' for s in steps)} | "
            f"{timed}/{total} | {Stat([r['evaluation']['seconds'] for r in runs]).show(0)} | "
            f"{Stat([r['wall_s'] for r in runs]).show(0)} |"
        )
        if note:
            name, match = EFFICIENCY_VARIANT.get(variant, (None, ""))
            row = rows.get(name) if name else None
            if row:
                activation = row.get("activation_bytes")
                line += (
                    f" {match} `{name}` | {_fmt(row.get('llm_step_s'))} | "
                    f"{_fmt(activation / 2**20 if activation else None, 0)} |"
                )
            else:
                line += " — | — | — |"
        lines.append(line)
    lines.append("")
    return lines


def _protocol_section(by_variant, variants, command) -> list[str]:
    lines = ["## Protocol", ""]
    lines += [
        "Every variant starts from the same offline-pretrained components and runs the same three-stage curriculum of"
        " `examples/recipes/pal_synth.yaml` (stage 1: connectors on classification rows; stage 2: connectors + LLM on"
        " closed-ended rows; stage 3: connectors + LLM on everything), with the same batch size, learning rates and"
        " per-stage budget (`max_steps` or `max_seconds`, whichever comes first; `reproduce.py --stage-seconds` sets"
        " every stage's `max_seconds`, identically for all variants). Each variant's recipe is derived"
        " from that file by overriding only the model section (encoders, integration, `lal_start_layer`) and, for the"
        " frozen-FFN ablation, the groups stages 2–3 train; Trainer checkpoints are off (a killed run restarts). The"
        " seed sets the new connectors' initialisation and the data order. Evaluation: greedy answers on a fixed"
        " subset of `test` and `test_compositional` (the same rows for every run, drawn per task with a fixed seed).",
        "",
        "| variant | encoders → route | LAL layers | stages 2–3 train | what it is |",
        "|---|---|---|---|---|",
    ]
    for variant in variants:
        run = by_variant[variant][0]
        routes = ", ".join(f"{name} → {route}" for name, route in run["model"]["encoders"].items())
        layers = run["model"]["lal_layers"]
        shown = f"{layers[0]}–{layers[-1]} of {run['model']['num_layers']}" if layers else "—"
        later = ", ".join(run["recipe"]["stages"][-1]["train"])
        lines.append(f"| `{variant}` | {routes} | {shown} | {later} | {run['description']} |")
    if by_variant:
        run = next(iter(by_variant.values()))[0]
        stages = run["recipe"]["stages"]
        budget = "; ".join(
            f"{stage.get('name', i + 1)}: ≤ {stage.get('args', {}).get('max_steps', '∞')} steps, "
            f"≤ {stage.get('max_seconds', '∞')} s, lr {stage.get('args', {}).get('learning_rate', '—')}"
            for i, stage in enumerate(stages)
        )
        env = run["environment"]
        lines += [
            "",
            f"Budget per stage: {budget}; batch {run['training']['batch_size']}; evaluation "
            f"{run['evaluation']['rows_per_task']} rows per task and split. Environment: {env['device']}, "
            f"{env['threads']} torch threads of {env['cpu_count']} CPUs (OMP_WAIT_POLICY "
            f"{env.get('omp_wait_policy') or 'unset'}), torch {env['torch']}, transformers "
            f"{env['transformers']}. Components: `{run['components']}`; data: `{run['data']}`.",
        ]
        metrics = run.get("components_metrics")
        if metrics:
            lines += ["", "Starting components (their `manifest.json`, from `pretrain_components`):", ""]
            for name, values in metrics.items():
                shown = ", ".join(
                    f"{key} {value:.3g}" if isinstance(value, float) else f"{key} {value}"
                    for key, value in values.items()
                    if value is not None and key not in MANIFEST_COUNTS
                )
                lines.append(f"- `{name}`: {shown}")
    lines += [
        "",
        "Run or resume the study (all variants × seeds 0, 1, 2; finished runs are skipped; `--report-only` rebuilds"
        " this page from the run files):",
        "",
        "```bash",
        command,
        "```",
        "",
    ]
    return lines


def _runs_section(by_variant, variants, left_out, problems) -> list[str]:
    lines = ["## Runs", "", "| variant | seed | overall | general_audio | train step (s) | run (s) | file |"]
    lines.append("|---|---:|---:|---:|---:|---:|---|")
    for variant in variants:
        for run in by_variant[variant]:
            lines.append(
                f"| `{variant}` | {run['seed']} | {_fmt(run['scores']['overall']['value'])} | "
                f"{_fmt(run['scores']['general_audio']['value'])} | {_fmt(run['training']['step_time_median_s'])} | "
                f"{run['wall_s']:.0f}{' ⚠' if run['wall_s'] > RUN_LIMIT_S else ''} | `{run['_file']}` |"
            )
    if left_out or problems:
        lines += ["", "Left out:", ""]
        for run in left_out:
            why = "failed: " + (run["error"] or "").splitlines()[0] if run["status"] != "ok" else "another protocol"
            lines.append(f"- `{run['_file']}` ({why})")
        lines += [f"- {problem}" for problem in problems]
    lines.append("")
    return lines


def write_report(results_dir: Path, docs: Path, efficiency_path: Path, command: str) -> str:
    runs, problems = load_runs(results_dir)
    by_variant, left_out, protocol = select_runs(runs)
    try:
        shown = Path(results_dir).resolve().relative_to(Path(__file__).resolve().parent.parent)
    except ValueError:
        shown = Path(results_dir)
    text = markdown(by_variant, left_out, protocol, problems, efficiency_rows(efficiency_path), command, str(shown))
    docs.parent.mkdir(parents=True, exist_ok=True)
    temporary = docs.with_name(f".{docs.name}.tmp")
    temporary.write_text(text)
    temporary.replace(docs)
    return text
