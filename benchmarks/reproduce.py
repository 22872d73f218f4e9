"""
The paper's controlled comparison on PAL-Synth (arXiv 2506.10423 §2, §4, §6): every variant starts from the same
offline-pretrained components and runs one identical curriculum and budget (`examples/recipes/pal_synth.yaml`, each
variant's recipe derived from it by overriding model/stage settings), then is evaluated on a fixed subset of `test`
and `test_compositional`; 3 seeds each. Writes one JSON per (variant, seed) to `benchmarks/results/reproduce/`
(atomically; finished ones are skipped on rerun, so the study resumes across sessions) and `docs/results.md`
(per-task metrics, efficiency, and a verdict on each claim).

    python -m modeling_pal.data.pretrain_components --data outputs/demo/pal_synth --out outputs/demo/components
    python benchmarks/reproduce.py                              # 7 variants × seeds 0,1,2: ≤ 4 min each, ≤ 100 min
    python benchmarks/reproduce.py --variants lal,plits --seeds 0 --time-limit-minutes 30
    python benchmarks/reproduce.py --report-only                # rebuild docs/results.md from the JSONs
    python benchmarks/reproduce.py --smoke --results /tmp/r --docs /tmp/r.md   # tiny components, ~2 minutes

Variants: plits, lal, pal, hybrid, lal_layer0, lal_frozen_ffn, lal_clap (see `_reproduce_study.VARIANTS`).
Each run: the three stages with `max_seconds` 45 (`--stage-seconds`), greedy answers on 16 rows per task and split
(`--rows-per-task`); about 2.5-3 min on 2 shared cores with OMP_WAIT_POLICY=PASSIVE (set here: spinning OpenMP
threads on oversubscribed cores made steps and generation several times slower). Runs go seed-major, so a partial
study has every variant of its first seeds. Run JSON schema: `_reproduce_report.RUN_SCHEMA`, described in the
"Run files" section of docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

for _name, _value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_name, _value)
os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would flood a background run's log
# Spinning OpenMP threads on 2 shared cores make every step and generate call several times slower (before torch)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from _args import name_list, non_negative_int_list, positive_float, positive_int  # noqa: E402
from _reproduce_report import VARIANT_ORDER, validate, write_report  # noqa: E402

RESULTS = HERE / "results" / "reproduce"
DOCS = ROOT / "docs" / "results.md"
EFFICIENCY = HERE / "results" / "efficiency-quick.json"
COMPONENTS = ROOT / "outputs" / "demo" / "components"
DATA = ROOT / "outputs" / "demo" / "pal_synth"
WORK = ROOT / "outputs" / "reproduce"
SMOKE_WORK = ROOT / "outputs" / "reproduce-smoke"
ROWS_PER_TASK = 16
# Every stage's max_seconds (the recipe's 50/55/55 s, plus setup and evaluation, overran 4 min on 2 loaded cores)
STAGE_SECONDS = 45.0
RUN_LIMIT_MINUTES = 4.0  # a (variant, seed) run must fit; --time-limit-minutes starts no run that would not
FULL_COMMAND = ".venv/bin/python benchmarks/reproduce.py --seeds 0,1,2"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--variants",
        type=name_list(VARIANT_ORDER),
        default=",".join(VARIANT_ORDER),
        help="comma-separated, from: %(default)s (duplicates dropped)",
    )
    parser.add_argument(
        "--seeds",
        type=non_negative_int_list,
        default="0,1,2",
        help="comma-separated seeds ≥ 0 (default %(default)s; duplicates dropped)",
    )
    parser.add_argument("--components", type=Path, help=f"pretrained llm/, whisper/, clap/ (default {COMPONENTS})")
    parser.add_argument("--data", type=Path, help=f"PAL-Synth save_to_disk directory (default {DATA})")
    parser.add_argument("--smoke", action="store_true", help="tiny random components + a tiny PAL-Synth (~2 minutes)")
    parser.add_argument("--report-only", action="store_true", help="rebuild the results page from the run JSONs")
    parser.add_argument("--results", type=Path, help=f"run JSON directory (default {RESULTS}; smoke: under work)")
    parser.add_argument("--docs", type=Path, help=f"results page (default {DOCS}; smoke: under work)")
    parser.add_argument("--work-dir", type=Path, help=f"training outputs (default {WORK}; smoke {SMOKE_WORK})")
    parser.add_argument("--efficiency", type=Path, default=EFFICIENCY, help="efficiency benchmark JSON to cite")
    parser.add_argument(
        "--rows-per-task", type=positive_int, help=f"evaluation rows per task and split (default {ROWS_PER_TASK})"
    )
    parser.add_argument(
        "--stage-seconds",
        type=positive_float,
        help=f"every stage's max_seconds (default {STAGE_SECONDS:g}; smoke: the recipe's)",
    )
    parser.add_argument(
        "--time-limit-minutes",
        type=positive_float,
        help=f"start no run that could end past this ({RUN_LIMIT_MINUTES:g} min each)",
    )
    parser.add_argument("--force", action="store_true", help="rerun finished runs too")
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep each run's stage models in the work dir")
    args = parser.parse_args(argv)
    work = args.work_dir or (SMOKE_WORK if args.smoke else WORK)
    args.work_dir = work
    args.results = args.results or (work / "results" if args.smoke else RESULTS)
    args.docs = args.docs or (work / "results.md" if args.smoke else DOCS)
    if args.rows_per_task is None:
        args.rows_per_task = 1 if args.smoke else ROWS_PER_TASK
    if args.stage_seconds is None and not args.smoke:
        args.stage_seconds = STAGE_SECONDS
    return args


def write_json(path: Path, value: dict) -> None:
    """Writes `value` to `path` atomically (a temporary file in the same directory, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    with os.fdopen(handle, "w") as file:
        json.dump(value, file, indent=1, allow_nan=False)
    os.replace(temporary, path)


def finished(path: Path, protocol: str, recipe: dict) -> bool:
    """Whether `path` holds a valid, successful run of this protocol and recipe."""
    if not path.is_file():
        return False
    try:
        run = json.loads(path.read_text())
    except json.JSONDecodeError:
        return False
    same = run.get("protocol") == protocol and run.get("recipe") == json.loads(json.dumps(recipe))
    return not validate(run) and run.get("status") == "ok" and same


def run_study(args: argparse.Namespace) -> list[dict]:
    import _reproduce_study as study
    import datasets
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()

    start = time.perf_counter()
    if args.smoke:
        data, components = study.build_smoke_inputs(args.work_dir / "inputs")
        data, components = args.data or data, args.components or components
    else:
        data, components = args.data or DATA, args.components or COMPONENTS
        missing = [name for name in ("llm", "whisper", "clap") if not (components / name / "config.json").is_file()]
        if missing or not (data / "dataset_dict.json").is_file():
            raise SystemExit(
                f"Needs PAL-Synth in {data} and pretrained components {missing or ''} in {components}: "
                f"python -m modeling_pal.data.pretrain_components --data {data} --out {components}"
            )
    base = study.base_recipe(smoke=args.smoke, stage_seconds=args.stage_seconds)
    evaluation = study.evaluation_settings(args.rows_per_task)
    records = []
    for seed in args.seeds:  # seed-major: a partial study still has every variant of its first seeds
        for variant in args.variants:
            # per run: components re-pretrained during a study must not pass for the ones earlier runs used
            protocol = study.protocol_fingerprint(base, evaluation, Path(components), Path(data), args.smoke)
            path = args.results / f"{variant}-seed{seed}.json"
            recipe = study.derive_recipe(base, variant, seed)
            if not args.force and finished(path, protocol, recipe):
                print(f"[reproduce] {variant} seed {seed}: finished, skipped ({path})", flush=True)
                continue
            elapsed = (time.perf_counter() - start) / 60
            if args.time_limit_minutes is not None and elapsed + RUN_LIMIT_MINUTES > args.time_limit_minutes:
                print(
                    f"[reproduce] time limit: not starting {variant} seed {seed} ({elapsed:.1f} min used)", flush=True
                )
                continue
            print(f"[reproduce] {variant} seed {seed}: training ({time.strftime('%H:%M:%S')})", flush=True)
            record = study.run_one(
                variant,
                seed,
                base=base,
                components=Path(components),
                data=Path(data),
                rows_per_task=args.rows_per_task,
                work_dir=args.work_dir / "runs",
                protocol=protocol,
                smoke=args.smoke,
                keep_checkpoints=args.keep_checkpoints,
            )
            if study.protocol_fingerprint(base, evaluation, Path(components), Path(data), args.smoke) != protocol:
                record.update(status="error", error="the components changed during the run")
            errors = validate(record)
            if errors:  # a bug in the writer: keep the record, marked failed, rather than lose the run
                record.update(status="error", error="schema: " + "; ".join(errors[:5]))
            write_json(path, record)
            records.append(record)
            score = record.get("scores", {}).get("overall", {}).get("value")
            print(
                f"[reproduce] {variant} seed {seed}: {record['status']}, overall "
                f"{'—' if score is None else f'{score:.3f}'}, {record['wall_s']:.0f} s → {path}",
                flush=True,
            )
            write_report(args.results, args.docs, args.efficiency, FULL_COMMAND)
    return records


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.report_only:
        run_study(args)
    write_report(args.results, args.docs, args.efficiency, FULL_COMMAND)
    print(f"[reproduce] wrote {args.docs}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
