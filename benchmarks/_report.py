"""
Derived numbers of the efficiency benchmark: medians, ratios (each with the raw inputs it is computed from), the
linear fit of LAL activation memory, acceptance targets, the JSON schema, and the Markdown/PNG report.

Every derived value names its inputs as references `{"variant", "na", "path"}` into `points`; a list-valued input
(raw timings) enters as its median. `tests/test_benchmarks.py` recomputes every value from those references.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

SCHEMA_VERSION = 1
STATUSES = ("ok", "oom", "unavailable", "error", "timeout")

# ----------------------------------------------------------------------------------------------------------------------
# Schema (a JSON-Schema subset; validated by `validate` below, no third-party dependency)
# ----------------------------------------------------------------------------------------------------------------------

NUM = {"type": "number"}
NUM_OR_NULL = {"type": ["number", "null"]}
NUM_LIST = {"type": "array", "items": NUM}
REF = {
    "type": "object",
    "required": ["variant", "na", "path"],
    "properties": {"variant": {"type": "string"}, "na": {"type": "integer"}, "path": {"type": "string"}},
}
POINT = {
    "type": "object",
    "required": [
        "variant",
        "na",
        "batch",
        "nt",
        "status",
        "reason",
        "timings",
        "memory",
        "kv_cache",
        "tokens",
        "flops",
    ],
    "properties": {
        "variant": {"type": "string"},
        "na": {"type": "integer"},
        "batch": {"type": "integer"},
        "nt": {"type": "integer"},
        "status": {"enum": list(STATUSES)},
        "reason": {"type": ["string", "null"]},
        "wall_s": NUM,
        "timings": {
            "type": "object",
            "properties": {
                name: NUM_LIST
                for name in (
                    "llm_step_s",
                    "llm_warmup_step_s",
                    "e2e_step_s",
                    "encoder_forward_s",
                    "prefill_s",
                    "prefill_e2e_s",
                    "decode_step_s",
                )
            },  # fmt: skip
        },
        "timings_cpu": {"type": "object", "additionalProperties": NUM_LIST},
        "skipped": {"type": "object", "additionalProperties": {"type": "string"}},
        "memory": {
            "type": "object",
            "properties": {
                "activation_bytes": {"type": "integer"},
                "activation_bytes_raw": {"type": "integer"},
                "method": {"enum": ["saved_tensors_hooks", "cuda_max_memory_allocated"]},
                "sweep": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["na", "batch", "activation_bytes"],
                        "properties": {
                            "na": {"type": "integer"},
                            "batch": {"type": "integer"},
                            "activation_bytes": {"type": "integer"},
                        },
                    },
                },
            },
        },
        "kv_cache": {
            "type": "object",
            "properties": {"total_bytes": {"type": "integer"}, "audio_bytes": {"type": "integer"}},
        },
        "tokens": {
            "type": "object",
            "properties": {
                "seq_len": {"type": "integer"},
                "plits_tokens": {"type": "integer"},
                "lal_columns": {"type": "integer"},
                "na": {"type": "integer"},
                "routes": {"type": "array", "items": {"type": "object"}},
            },
        },
        "flops": {
            "type": "object",
            "properties": {"total": NUM, "text": NUM, "audio_path": NUM, "audio_breakdown": {"type": "object"}},
        },
    },
}
SCHEMA = {
    "type": "object",
    "required": ["schema_version", "mode", "created", "environment", "settings", "points", "summary"],
    "properties": {
        "schema_version": {"enum": [SCHEMA_VERSION]},
        "mode": {"enum": ["quick", "full", "smoke", "custom"]},
        "created": {"type": "string"},
        "complete": {"type": "boolean"},
        "environment": {
            "type": "object",
            "required": ["device", "torch", "transformers", "threads"],
            "properties": {"device": {"type": "string"}, "threads": {"type": "integer"}},
        },
        "settings": {
            "type": "object",
            "required": ["shape_name", "shape", "nt", "na_points", "batch", "variants", "repeats", "dtype"],
            "properties": {
                "nt": {"type": "integer"},
                "na_points": {"type": "array", "items": {"type": "integer"}},
                "batch": {"type": "integer"},
                "large_na": {"type": ["integer", "null"]},
                "variants": {"type": "array", "items": {"type": "string"}},
            },
        },
        "points": {"type": "array", "items": POINT},
        "summary": {
            "type": "object",
            "required": ["per_point", "ratios", "fits", "targets"],
            "properties": {
                "per_point": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["variant", "na", "batch", "status"],
                        "properties": {"variant": {"type": "string"}, "na": {"type": "integer"}},
                    },
                },
                "ratios": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "na", "formula", "inputs", "value"],
                        "properties": {
                            "name": {"type": "string"},
                            "na": {"type": "integer"},
                            "formula": {"enum": ["a/b", "(a-b)/(c*b/d)", "(a/b)/(c/d)"]},
                            "inputs": {"type": "object", "additionalProperties": REF},
                            "value": NUM,
                        },
                    },
                },
                "fits": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "x", "y", "slope", "intercept", "r2", "max_rel_residual"],
                        "properties": {
                            "x": NUM_LIST,
                            "y": NUM_LIST,
                            "slope": NUM,
                            "intercept": NUM,
                            "r2": NUM,
                            "max_rel_residual": NUM,
                        },
                    },
                },
                "targets": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "description", "op", "threshold", "value", "pass", "uses"],
                        "properties": {
                            "op": {"enum": [">=", "<="]},
                            "threshold": NUM,
                            "value": NUM_OR_NULL,
                            "pass": {"type": ["boolean", "null"]},
                            "uses": {"type": "array", "items": {"type": "string"}},
                        },
                    },
                },
            },
        },
    },
}

TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "null": type(None),
}


def validate(value, schema: dict = SCHEMA, path: str = "$") -> list[str]:
    """Errors of `value` against the schema subset used here (type, enum, required, properties, items)."""
    errors = []
    if "type" in schema:
        allowed = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        ok = any(
            isinstance(value, TYPES[name]) and not (name in ("integer", "number") and isinstance(value, bool))
            for name in allowed
        )
        if isinstance(value, float) and "number" in allowed and not math.isfinite(value):
            ok = False
        if not ok:
            return [f"{path}: expected {allowed}, got {type(value).__name__}"]
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
    return errors


# ----------------------------------------------------------------------------------------------------------------------
# References and formulas
# ----------------------------------------------------------------------------------------------------------------------

FORMULAS = {
    "a/b": lambda v: v["a"] / v["b"],
    "(a-b)/(c*b/d)": lambda v: (v["a"] - v["b"]) / (v["c"] * v["b"] / v["d"]),
    "(a/b)/(c/d)": lambda v: (v["a"] / v["b"]) / (v["c"] / v["d"]),
}


def find_point(points: list[dict], variant: str, na: int) -> dict | None:
    for point in points:
        if point["variant"] == variant and point["na"] == na:
            return point
    return None


def resolve(points: list[dict], ref: dict):
    """The value a reference names: a scalar as is, a list of raw samples as its median; None when missing."""
    point = find_point(points, ref["variant"], ref["na"])
    if point is None or point["status"] != "ok":
        return None
    value = point
    for key in ref["path"].split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    if isinstance(value, list):
        return statistics.median(value) if value else None
    return value


def ref(variant: str, na: int, path: str) -> dict:
    return {"variant": variant, "na": na, "path": path}


def make_ratio(points: list[dict], name: str, na: int, formula: str, **inputs: dict) -> dict | None:
    values = {key: resolve(points, value) for key, value in inputs.items()}
    if any(value is None for value in values.values()):
        return None
    try:
        result = FORMULAS[formula](values)
    except ZeroDivisionError:
        return None
    return {"name": name, "na": na, "formula": formula, "inputs": inputs, "value": result}


def linear_fit(x: list[float], y: list[float]) -> dict:
    n = len(x)
    mean_x, mean_y = sum(x) / n, sum(y) / n
    sxx = sum((a - mean_x) ** 2 for a in x)
    slope = sum((a - mean_x) * (b - mean_y) for a, b in zip(x, y)) / sxx
    intercept = mean_y - slope * mean_x
    predicted = [intercept + slope * a for a in x]
    ss_res = sum((b - p) ** 2 for b, p in zip(y, predicted))
    ss_tot = sum((b - mean_y) ** 2 for b in y)
    return {
        "slope": slope,
        "intercept": intercept,
        "r2": 1.0 - ss_res / ss_tot if ss_tot else 1.0,
        "max_rel_residual": max(abs(b - p) / abs(b) for b, p in zip(y, predicted)),
    }


# ----------------------------------------------------------------------------------------------------------------------
# Summary
# ----------------------------------------------------------------------------------------------------------------------

PER_POINT_METRICS = {
    "llm_step_s": "timings.llm_step_s",
    "llm_step_cpu_s": "timings_cpu.llm_step_s",
    "e2e_step_s": "timings.e2e_step_s",
    "encoder_forward_s": "timings.encoder_forward_s",
    "prefill_s": "timings.prefill_s",
    "prefill_e2e_s": "timings.prefill_e2e_s",
    "decode_step_s": "timings.decode_step_s",
    "activation_bytes": "memory.activation_bytes",
    "kv_audio_bytes": "kv_cache.audio_bytes",
    "kv_total_bytes": "kv_cache.total_bytes",
    "flops_step": "flops.total",
    "flops_audio_path": "flops.audio_path",
}
LINEAR_FIT_R2 = 0.99
TARGET_NA = 500  # the acceptance point (--quick); sweeps without Na = 500 report these targets as not measured
TARGETS = [
    # name (= the ratio it reads), description, op, threshold, scope ("target_na" or "every_na")
    ("lal_vs_plits_llm_throughput", "LAL vs PLITS LLM-side training throughput", ">=", 4.0, "target_na"),
    ("lal_vs_plits_activation", "LAL vs PLITS activation memory", "<=", 0.35, "target_na"),
    (
        "lal_audio_path_measured_vs_predicted",
        "LAL overhead over text (LLM-side step) / FLOP-predicted audio-path time",
        "<=",
        1.3,
        "target_na",
    ),
    (
        "pal_vs_pal_plits_measured_over_predicted",
        "PAL vs all-PLITS (same encoders): measured throughput ratio / FLOP-predicted ratio",
        ">=",
        0.9,
        "target_na",
    ),
    ("lal_vs_plits_decode_tokens_per_s", "LAL vs PLITS cached decode tokens/s, at every Na", ">=", 1.0, "every_na"),
]


def summarize(results: dict) -> dict:
    points = results["points"]
    na_points = sorted({point["na"] for point in points})
    per_point = []
    for point in points:
        row = {"variant": point["variant"], "na": point["na"], "batch": point["batch"], "status": point["status"]}
        for name, path in PER_POINT_METRICS.items():
            row[name] = resolve(points, ref(point["variant"], point["na"], path))
        step = row["llm_step_s"]
        row["llm_samples_per_s"] = point["batch"] / step if step else None
        row["e2e_samples_per_s"] = point["batch"] / row["e2e_step_s"] if row["e2e_step_s"] else None
        row["decode_tokens_per_s"] = point["batch"] / row["decode_step_s"] if row["decode_step_s"] else None
        text = resolve(points, ref("text", point["na"], "timings.llm_step_s"))
        text_flops = resolve(points, ref("text", point["na"], "flops.total"))
        if text and text_flops and step and row["flops_audio_path"] is not None and point["variant"] != "text":
            row["text_flop_per_s"] = text_flops / text
            row["predicted_audio_path_s"] = row["flops_audio_path"] / row["text_flop_per_s"]
            row["measured_audio_path_s"] = step - text
        per_point.append(row)

    ratios = []

    def add(*args, **kwargs):
        ratio = make_ratio(points, *args, **kwargs)
        if ratio is not None:
            ratios.append(ratio)

    variants = results["settings"]["variants"]
    for na in na_points:
        for variant in variants:
            if variant in ("text", "plits"):
                continue
            base = f"{variant}_vs_plits"
            step, e2e = "timings.llm_step_s", "timings.e2e_step_s"
            add(f"{base}_llm_throughput", na, "a/b", a=ref("plits", na, step), b=ref(variant, na, step))
            add(f"{base}_e2e_throughput", na, "a/b", a=ref("plits", na, e2e), b=ref(variant, na, e2e))
            cpu = "timings_cpu.llm_step_s"  # process CPU seconds: a load-robust cross-check of the wall-clock ratio
            add(f"{base}_llm_throughput_cputime", na, "a/b", a=ref("plits", na, cpu), b=ref(variant, na, cpu))
            act = "memory.activation_bytes"
            add(f"{base}_activation", na, "a/b", a=ref(variant, na, act), b=ref("plits", na, act))
            prefill, decode = "timings.prefill_s", "timings.decode_step_s"
            add(f"{base}_prefill_speedup", na, "a/b", a=ref("plits", na, prefill), b=ref(variant, na, prefill))
            add(f"{base}_decode_tokens_per_s", na, "a/b", a=ref("plits", na, decode), b=ref(variant, na, decode))
            cpu = "timings_cpu.decode_step_s"
            add(f"{base}_decode_tokens_per_s_cputime", na, "a/b", a=ref("plits", na, cpu), b=ref(variant, na, cpu))
            kv = "kv_cache.audio_bytes"
            add(f"{base}_kv_audio_bytes", na, "a/b", a=ref(variant, na, kv), b=ref("plits", na, kv))
        for suffix, step in (("", "timings.llm_step_s"), ("_cputime", "timings_cpu.llm_step_s")):
            for variant in variants:
                if variant == "text":
                    continue
                add(
                    f"{variant}_audio_path_measured_vs_predicted{suffix}", na, "(a-b)/(c*b/d)",
                    a=ref(variant, na, step), b=ref("text", na, step),
                    c=ref(variant, na, "flops.audio_path"), d=ref("text", na, "flops.total"),
                )  # fmt: skip
            add(
                f"pal_vs_pal_plits_llm_throughput{suffix}", na, "a/b", a=ref("pal_plits", na, step),
                b=ref("pal", na, step),
            )  # fmt: skip
            add(
                f"pal_vs_pal_plits_measured_over_predicted{suffix}", na, "(a/b)/(c/d)",
                a=ref("pal_plits", na, step), b=ref("pal", na, step),
                c=ref("pal_plits", na, "flops.total"), d=ref("pal", na, "flops.total"),
            )  # fmt: skip
        flops = "flops.total"
        add("pal_vs_pal_plits_predicted", na, "a/b", a=ref("pal_plits", na, flops), b=ref("pal", na, flops))

    fits = []
    fit = lal_activation_fit(points)
    if fit is not None:
        fits.append(fit)

    targets = []
    target_na = TARGET_NA if TARGET_NA in na_points else None
    for name, description, op, threshold, scope in TARGETS:
        found = [ratio for ratio in ratios if ratio["name"] == name]
        used = found if scope == "every_na" else [ratio for ratio in found if ratio["na"] == target_na]
        values = [ratio["value"] for ratio in used]
        worst = (min(values) if op == ">=" else max(values)) if values else None
        cpu = [r["value"] for r in ratios if r["name"] == f"{name}_cputime" and r["na"] in {u["na"] for u in used}]
        targets.append(
            {
                "name": name,
                "description": description,
                "op": op,
                "threshold": threshold,
                "value": worst,
                "scope": scope,
                "na": None if scope == "every_na" else target_na,
                "per_na": {str(ratio["na"]): ratio["value"] for ratio in found},
                "pass": None if worst is None else (worst >= threshold if op == ">=" else worst <= threshold),
                "uses": [name],
                "value_cputime": (min(cpu) if op == ">=" else max(cpu)) if cpu else None,
                "detail": (
                    ("worst case over every Na" if scope == "every_na" else f"at Na = {target_na}")
                    if values
                    else ("not measured (missing points)" if scope == "every_na" or target_na else "no Na = 500 point")
                ),
            }
        )
    targets.append(
        {
            "name": "lal_activation_linear_in_na",
            "description": f"LAL activation memory per sample is linear in Na (least-squares fit, R² ≥ {LINEAR_FIT_R2})",
            "op": ">=",
            "threshold": LINEAR_FIT_R2,
            "value": fit["r2"] if fit else None,
            "pass": None if fit is None else fit["r2"] >= LINEAR_FIT_R2,
            "uses": [fit["name"]] if fit else [],
            "value_cputime": None,
            "detail": (
                f"slope {fit['slope']:.0f} B per audio column per sample, max relative residual "
                f"{fit['max_rel_residual']:.2%}"
                if fit
                else "not measured (needs ≥ 3 Na values)"
            ),
        }
    )
    return {"per_point": per_point, "ratios": ratios, "fits": fits, "targets": targets}


def lal_activation_fit(points: list[dict]) -> dict | None:
    """Least-squares line of LAL activation bytes per sample vs Na (the in-process sweep, else the sweep's points)."""
    samples: dict[int, float] = {}
    for point in points:
        if point["variant"] != "lal" or point["status"] != "ok":
            continue
        if "activation_bytes" in point["memory"]:
            samples.setdefault(point["na"], point["memory"]["activation_bytes"] / point["batch"])
        for entry in point["memory"].get("sweep", []):
            samples[entry["na"]] = entry["activation_bytes"] / entry["batch"]
    if len(samples) < 3:
        return None
    x = sorted(samples)
    y = [samples[na] for na in x]
    return {"name": "lal_activation_bytes_per_sample_vs_na", "x": x, "y": y, **linear_fit(x, y)}


# ----------------------------------------------------------------------------------------------------------------------
# Markdown tables and plots
# ----------------------------------------------------------------------------------------------------------------------


def _fmt(value, scale: float = 1.0, digits: int = 3, suffix: str = "") -> str:
    if value is None:
        return "–"
    value = value / scale
    if abs(value) >= 100:
        return f"{value:,.0f}{suffix}"
    return f"{value:.{digits}g}{suffix}"


def _load(values) -> str:
    return "/".join(f"{v:.1f}" for v in values) if values else "–"


def markdown(results: dict, title: str) -> str:
    summary = results["summary"]
    settings, env = results["settings"], results["environment"]
    ratio = {(r["name"], r["na"]): r["value"] for r in summary["ratios"]}
    llm = settings["shape"]["llm"]
    lines = [
        f"### {title}",
        "",
        f"{env['device']}, {env['threads']} threads, torch {env['torch']}, transformers {env['transformers']}, "
        f"{settings['dtype']}; `{results['mode']}` run of {results['created']}.",
        f"LLM {llm['num_hidden_layers']} layers × {llm['hidden_size']} (FFN {llm['intermediate_size']}, "
        f"{llm['num_attention_heads']} heads / {llm['num_key_value_heads']} KV heads, vocab {llm['vocab_size']}), "
        f"`lal_start_layer={settings['shape']['lal_start_layer']}`; Nt = {settings['nt']}; "
        f"batch {settings['batch']}"
        + (f" (1 above Na = {settings['large_na']})" if settings.get("large_na") else "")
        + f"; medians of {settings['repeats']['step']} LLM-side steps / {settings['repeats']['e2e']} end-to-end "
        f"steps / {settings['repeats']['generate']} generations"
        + (
            f" ({settings['large_na_repeats']['step']} / {settings['large_na_repeats']['e2e']} / "
            f"{settings['large_na_repeats']['generate']} above Na = {settings['large_na']})"
            if settings.get("large_na") and settings.get("large_na_repeats") != settings["repeats"]
            else ""
        )
        + (f"; end-to-end only up to Na = {settings['max_e2e_na']}" if settings.get("max_e2e_na") else "")
        + f". Load average (1/5/15 min) at start {_load(env.get('load_average_start'))}, "
        f"end {_load(env.get('load_average_end'))}; workers' malloc: {env.get('allocator', 'system malloc')}.",
        "",
    ]
    if summary["targets"]:
        if settings.get("shape_name") != "cpu":
            lines += [
                f"The targets are the quick run's acceptance points (CPU shapes, Na = {TARGET_NA}); at these shapes "
                "they are a comparison, not a verdict.",
                "",
            ]
        lines += [
            "| target | where | value (wall clock) | threshold | pass | same from process CPU time |",
            "|---|---|---|---|---|---|",
        ]
        for target in summary["targets"]:
            status = {True: "**pass**", False: "**FAIL**", None: "n/a"}[target["pass"]]
            where = "every Na" if target.get("scope") != "target_na" else f"Na = {TARGET_NA}"
            lines.append(
                f"| {target['description']} | {where} | {_fmt(target['value'])} | {target['op']} "
                f"{target['threshold']} | {status} | {_fmt(target.get('value_cputime'))} |"
            )
        lines.append("")
    rows_by_na: dict[int, list[dict]] = {}
    for row in summary["per_point"]:
        rows_by_na.setdefault(row["na"], []).append(row)
    for na, rows in sorted(rows_by_na.items()):
        lines += [
            f"**Na = {na}** (batch {rows[0]['batch']})",
            "",
            "| variant | LLM step s | × vs PLITS | CPU s | × vs PLITS (CPU) | e2e step s | × vs PLITS | activations MB | "
            "vs PLITS | prefill ms | decode tok/s | audio KV MB | audio path: FLOP-predicted s | measured s | "
            "meas./pred. |",
            "|---|" + "---|" * 14,
        ]
        for row in rows:
            v = row["variant"]
            if row["status"] != "ok":
                point = find_point(results["points"], v, na)
                reason = (point.get("reason") or "").strip().splitlines()
                lines.append(f"| {v} | {row['status']}: {reason[-1][:120] if reason else ''} |" + " |" * 13)
                continue
            lines.append(
                "| "
                + " | ".join(
                    [
                        v,
                        _fmt(row["llm_step_s"]),
                        _fmt(ratio.get((f"{v}_vs_plits_llm_throughput", na)), suffix="×"),
                        _fmt(resolve(results["points"], ref(v, na, "timings_cpu.llm_step_s"))),
                        _fmt(ratio.get((f"{v}_vs_plits_llm_throughput_cputime", na)), suffix="×"),
                        _fmt(row["e2e_step_s"]),
                        _fmt(ratio.get((f"{v}_vs_plits_e2e_throughput", na)), suffix="×"),
                        _fmt(row["activation_bytes"], 1e6),
                        _fmt(ratio.get((f"{v}_vs_plits_activation", na))),
                        _fmt(row["prefill_s"], 1e-3),
                        _fmt(row["decode_tokens_per_s"]),
                        _fmt(row["kv_audio_bytes"], 1e6),
                        _fmt(row.get("predicted_audio_path_s")),
                        _fmt(row.get("measured_audio_path_s")),
                        _fmt(ratio.get((f"{v}_audio_path_measured_vs_predicted", na))),
                    ]
                )
                + " |"
            )
        pal = ratio.get(("pal_vs_pal_plits_llm_throughput", na))
        if pal is not None:
            lines.append("")
            lines.append(
                f"PAL vs all-PLITS with the same encoders: measured {pal:.2f}× faster LLM-side, FLOP-predicted "
                f"{ratio[('pal_vs_pal_plits_predicted', na)]:.2f}× "
                f"(measured/predicted {ratio[('pal_vs_pal_plits_measured_over_predicted', na)]:.2f})."
            )
        lines.append("")
    for fit in summary["fits"]:
        lines.append(
            f"LAL activation memory per sample = {fit['intercept'] / 1e6:.2f} MB + {fit['slope'] / 1e3:.2f} kB × Na "
            f"(R² = {fit['r2']:.5f}, Na = {', '.join(str(int(x)) for x in fit['x'])})."
        )
        lines.append("")
    return "\n".join(lines)


PLOTS = [
    ("llm_step_s", "LLM-side training step per sample (s, wall)", True),
    ("llm_step_cpu_s", "LLM-side training step per sample (process CPU s)", True),
    ("e2e_step_s", "end-to-end training step per sample (s, wall)", True),
    ("activation_bytes", "activation memory per sample (MB)", True),
    ("prefill_s", "prefill latency per sample (s, wall)", True),
    ("decode_step_s", "cached decode step (s, wall)", False),
    ("kv_audio_bytes", "audio K/V cache per sample (MB)", True),
    ("flops_audio_path", "FLOP-predicted audio path per sample (GFLOP)", True),
]


def plots(results: dict, directory: Path, prefix: str) -> list[Path]:
    """One PNG per metric: cost vs Na, one line per variant (per-sample values, so batch changes do not show)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    rows = [row for row in results["summary"]["per_point"] if row["status"] == "ok"]
    na_points = sorted({row["na"] for row in results["summary"]["per_point"]})
    fig, axes = plt.subplots(2, 4, figsize=(19, 8.5))
    for ax, (metric, label, per_sample) in zip(axes.flat, PLOTS):
        scale = 1e6 if "bytes" in metric else 1e9 if "flops" in metric else 1
        for variant in results["settings"]["variants"]:
            data = sorted(
                (row["na"], row[metric] / (row["batch"] if per_sample else 1) / scale)
                for row in rows
                if row["variant"] == variant and row.get(metric) is not None
            )
            if variant == "text" or not data:
                continue
            ax.plot([x for x, _ in data], [y for _, y in data], marker="o", label=variant)
            for na in sorted({r["na"] for r in results["summary"]["per_point"]}):
                point = find_point(results["points"], variant, na)
                if point is not None and point["status"] == "oom":
                    ax.axvline(na, color="grey", linestyle=":", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(na_points, [str(na) for na in na_points])
        ax.minorticks_off()
        ax.set_xlabel("Na (audio tokens / K/V columns per sample)")
        ax.set_title(label)
        ax.grid(True, which="both", alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"PAL efficiency ({results['mode']}, {results['environment']['device']}): cost vs Na")
    fig.tight_layout()
    path = directory / f"{prefix}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    written.append(path)
    return written
