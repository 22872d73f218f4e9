"""
PAL efficiency benchmark: text-only LLM, PLITS, LAL, PAL, hybrid and Transformers' Qwen2-Audio at equal Na (audio
tokens or audio K/V columns per sample) and equal Nt (text positions), each variant and Na in its own process.

    python benchmarks/efficiency.py --quick                    # Na = 500, ≤ 3 min on 2 CPU cores, acceptance targets
    python benchmarks/efficiency.py                            # full CPU sweep (Na 125 … 15000), docs tables + plots
    python benchmarks/efficiency.py --device cuda --shape paper  # Llama-3.2-1B + Whisper-large-v3 + CLAP, bf16
    python benchmarks/efficiency.py --report                   # rebuild docs/benchmarks.md from the result files

Measured per point: LLM-side training step (encoder outputs precomputed, LLM + connectors trainable, AdamW),
end-to-end step (frozen encoder forward included), activation memory (CPU: bytes saved for backward; CUDA: peak
allocation during the forward), prefill latency, cached decode tokens/s, audio K/V cache bytes, and the
FLOP-predicted cost of the audio path next to the measured one. See benchmarks/README.md for the JSON schema.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _args import (  # noqa: E402
    fraction,
    name_list,
    non_negative_int,
    positive_float,
    positive_int,
    positive_int_list,
)
from _report import SCHEMA_VERSION, markdown, plots, summarize, validate  # noqa: E402
from _variants import SHAPES, VARIANT_HELP, VARIANTS, batch_for  # noqa: E402

from modeling_pal.cpu import preload_environment, tcmalloc_library  # noqa: E402

RESULTS = HERE / "results"
DOCS = ROOT / "docs" / "benchmarks.md"
IMAGES = ROOT / "docs" / "img"
FULL_NA = [125, 500, 2000, 7500, 15000]
MODES = {
    # mode: shape, Na points, Nt, batch, Na above which batch is 1, repeats, warm-up steps, decode tokens
    "quick": dict(
        shape="cpu", na=[500], nt=64, batch=4, large_na=None, max_e2e_na=None,
        repeats={"step": 4, "e2e": 1, "generate": 2, "prefill_e2e": 1}, warmup=2, decode_tokens=16,
        activation_sweep=[125, 250, 500, 1000, 2000],
    ),
    "full": dict(
        shape="cpu", na=FULL_NA, nt=64, batch=4, large_na=2000, max_e2e_na=2000,
        repeats={"step": 3, "e2e": 2, "generate": 2, "prefill_e2e": 2}, warmup=2, decode_tokens=16,
        activation_sweep=None, large_repeats={"step": 1, "e2e": 1, "generate": 1, "prefill_e2e": 1},
    ),
    "smoke": dict(
        shape="smoke", na=[48, 96], nt=16, batch=2, large_na=64, max_e2e_na=None,
        repeats={"step": 1, "e2e": 1, "generate": 1, "prefill_e2e": 1}, warmup=1, decode_tokens=2,
        activation_sweep=[24, 48, 72],
    ),
}  # fmt: skip
REPORT_SECTIONS = {
    "efficiency-quick.json": "Quick run (CPU, Na = 500)",
    "efficiency-cpu.json": "Full CPU sweep",
    "efficiency-cpu-reduced.json": "Reduced CPU sweep (code-path check)",
    "efficiency-paper-cpu.json": "Paper shapes on CPU (bf16)",
    "efficiency-paper-cuda.json": "Paper shapes on CUDA (bf16)",
}


# Options that change what a run measures (or whether a point ends up measured, oom or timeout): a --quick or full run
# with any of them is labelled "custom" and never writes the mode's default result file.
MEASUREMENT_OPTIONS = (
    "device", "shape", "dtype", "variants", "na", "nt", "batch", "large_na", "repeats", "max_e2e_na",
    "pal_lal_fraction", "threads", "memory_limit_gb", "point_timeout", "omp_wait_policy", "allocator", "seed",
    "launcher", "simulate_oom_na",
)  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="Na = 500, Nt = 64, batch 4, CPU shapes (≤ 3 minutes)")
    mode.add_argument("--smoke", action="store_true", help="tiny shapes, 1 repeat (the test suite's mode)")
    mode.add_argument("--report", action="store_true", help="only rebuild docs/benchmarks.md and plots from results/")
    mode.add_argument(
        "--refresh",
        type=Path,
        metavar="JSON",
        help="recompute the FLOP model and the summary of an existing result file from its raw points (no timing)",
    )
    parser.add_argument("--device", help="cpu (default) or cuda")
    parser.add_argument("--shape", choices=sorted(SHAPES), help="model shapes (default: cpu; smoke for --smoke)")
    parser.add_argument("--dtype", help="default: bfloat16 on CUDA and for the paper shapes, float32 otherwise")
    parser.add_argument(
        "--variants",
        type=name_list(VARIANTS),
        help=f"comma-separated subset of {','.join(VARIANTS)} (duplicates dropped: one point per variant and Na)",
    )
    parser.add_argument(
        "--na", type=positive_int_list, help="comma-separated Na points ≥ 1 (overrides the mode's; duplicates dropped)"
    )
    parser.add_argument("--nt", type=positive_int, help="text positions per sample")
    parser.add_argument("--batch", type=positive_int, help="batch size (Na ≤ --large-na)")
    parser.add_argument(
        "--large-na", type=non_negative_int, help="batch 1 above this Na (full sweep: 2000); 0 = never"
    )
    parser.add_argument("--repeats", type=positive_int, help="timed repeats of every measurement")
    parser.add_argument(
        "--max-e2e-na",
        type=non_negative_int,
        help="end-to-end step / prefill only up to this Na (full CPU sweep: 2000, to fit 30 minutes); 0 = always",
    )
    parser.add_argument(
        "--pal-lal-fraction", type=fraction, help="PAL: share of Na that CLAP sends via LAL (default 0.5)"
    )
    parser.add_argument("--threads", type=positive_int, help="torch threads per worker (default: all CPUs)")
    parser.add_argument(
        "--memory-limit-gb",
        type=positive_float,
        help="address-space limit per CPU worker (OOM → 'oom'; default: 60 %% of available memory, at most 16 GiB)",
    )
    parser.add_argument(
        "--point-timeout", type=positive_float, help="seconds before a point is 'timeout' (default 1800)"
    )
    parser.add_argument(
        "--omp-wait-policy",
        help="OMP_WAIT_POLICY of the workers: PASSIVE (default) keeps shared, oversubscribed cores usable; "
        "ACTIVE spins (slightly faster on an idle machine, 10-30× slower on a busy one)",
    )
    parser.add_argument(
        "--allocator",
        choices=["tcmalloc", "system"],
        help="malloc of the workers: tcmalloc (default, when installed) keeps freed memory for the next step; glibc's "
        "returns large blocks to the OS and page-faults them back every step (10-20 %% of a CPU step here)",
    )
    parser.add_argument("--seed", type=int, help="default 0")
    parser.add_argument(
        "--launcher",
        choices=["forkserver", "exec"],
        help="how points get their own process (default: forkserver on CPU, exec on CUDA)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="result JSON (default: benchmarks/results/efficiency-<mode>.json; a custom run: efficiency-custom.json)",
    )
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md and plots")
    parser.add_argument("--simulate-oom-na", type=int, help=argparse.SUPPRESS)  # test hook: points at Na ≥ N 'oom'
    args = parser.parse_args(argv)
    defaults = dict(
        device="cpu", pal_lal_fraction=0.5, threads=os.cpu_count(), point_timeout=1800.0, omp_wait_policy="PASSIVE",
        allocator="tcmalloc", seed=0,
    )  # fmt: skip
    args.customised = sorted(
        name
        for name in MEASUREMENT_OPTIONS
        if getattr(args, name) is not None and getattr(args, name) != defaults.get(name, object())
    )
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def environment(args, device: str) -> dict:
    import torch
    import transformers

    env = {
        "device": device,
        "device_name": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_start": list(os.getloadavg()),
    }
    if device.startswith("cuda"):
        env["device_name"] = torch.cuda.get_device_name()
    return env


def default_memory_limit() -> int | None:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    available = int(re.search(r"MemAvailable:\s+(\d+)", text).group(1)) * 1024
    return int(min(0.6 * available, 16 * 2**30))


PRELOAD = [
    "_worker",
    "modeling_pal",
    "transformers.models.llama.modeling_llama",
    "transformers.models.qwen2_audio.modeling_qwen2_audio",
    "transformers.generation.utils",
]


def allocator_library(choice: str) -> str | None:
    """The malloc library workers preload for `--allocator`, or None for the system's (also when it is missing)."""
    if choice == "system":
        return None
    library = tcmalloc_library()
    if library is None:
        print(
            "note: tcmalloc not found (Debian: libtcmalloc-minimal4); workers use the system malloc", file=sys.stderr
        )
    return library


@contextlib.contextmanager
def preloading(library: str | None):
    """Processes started inside the block (the fork server, exec'd workers) preload `library`."""
    saved = dict(os.environ)
    os.environ.update(preload_environment(library))
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


class Launcher:
    """
    Starts every point in a fresh process, preloading `allocator` (a malloc library, or None). CPU: children forked
    from a fork server that imported torch/transformers once and never ran a torch op (no per-point import cost,
    still one process per point). CUDA: a fresh interpreter per point (CUDA cannot be forked).
    """

    def __init__(self, kind: str, allocator: str | None):
        self.kind, self.allocator = kind, allocator
        self.context = None
        if kind == "forkserver":
            import multiprocessing
            import multiprocessing.forkserver

            self.context = multiprocessing.get_context("forkserver")
            self.context.set_forkserver_preload(PRELOAD)
            with preloading(allocator):
                multiprocessing.forkserver.ensure_running()

    def run(self, spec_path: Path, out_path: Path, timeout: float) -> tuple[int | None, str]:
        if self.context is None:
            command = [sys.executable, str(HERE / "_worker.py"), str(spec_path), str(out_path)]
            try:
                with preloading(self.allocator):
                    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
            except subprocess.TimeoutExpired as error:
                stderr = error.stderr or ""
                return None, stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
            return proc.returncode, proc.stderr
        import _worker

        stderr_path = spec_path.with_name("stderr.txt")
        process = self.context.Process(
            target=_worker.main_capturing_stderr, args=(str(spec_path), str(out_path), str(stderr_path))
        )
        process.start()
        process.join(timeout)
        if process.is_alive():
            process.kill()
            process.join()
            returncode = None
        else:
            returncode = process.exitcode
        stderr = stderr_path.read_text(errors="replace") if stderr_path.exists() else ""
        return returncode, stderr


# A worker that died with one of these in its stderr failed to allocate memory (under the address-space limit of
# --memory-limit-gb: torch, tcmalloc, glibc, or libgomp failing to map a new thread's stack).
ALLOCATION_FAILURES = (
    "out of memory", "cannot allocate memory", "can't allocate memory", "not enough memory", "bad_alloc",
    "memoryerror", "allocation failed", "thread creation failed",
)  # fmt: skip


def crash_point(returncode: int | None, stderr: str, timeout: float) -> tuple[str, str]:
    """(status, reason) of a point whose worker timed out, was killed or exited without a result."""
    tail = stderr.strip()[-1500:]
    if returncode is None:
        return "timeout", f"no result within {timeout:.0f} s" + (f"; stderr: {tail}" if tail else "")
    if returncode == -9:  # the kernel's OOM killer sends SIGKILL (so does anyone running kill -9)
        reason = "killed by SIGKILL, most likely the kernel's OOM killer"
        return "oom", reason + (f"; stderr: {tail}" if tail else "")
    how = f"killed by signal {-returncode}" if returncode < 0 else f"exit {returncode}"
    status = "oom" if any(marker in tail.lower() for marker in ALLOCATION_FAILURES) else "error"
    return status, f"{how}: {tail}" if tail else f"{how} (nothing on stderr)"


def run_point(spec: dict, timeout: float, launcher: Launcher) -> dict:
    """Runs one point in its own process; a crash or kill still yields a point (status oom / error / timeout)."""
    with tempfile.TemporaryDirectory(prefix="pal-bench-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps(spec))
        returncode, stderr = launcher.run(spec_path, out_path, timeout)
        point = json.loads(out_path.read_text()) if out_path.exists() else None
    base = {key: spec[key] for key in ("variant", "na", "batch", "nt")}
    empty = {"timings": {}, "timings_cpu": {}, "memory": {}, "kv_cache": {}, "tokens": {}, "flops": {}, "params": {}}
    if returncode is None or returncode != 0 or point is None:
        status, reason = crash_point(returncode, stderr, timeout)
        return {**base, **empty, **(point or {}), "status": status, "reason": reason}
    tail = stderr.strip()[-500:]
    if point["status"] in ("oom", "error") and tail and tail not in (point["reason"] or ""):
        point["reason"] = f"{point['reason'] or ''}; stderr: {tail}"  # e.g. the allocator's own message
    return point


def write(results: dict, path: Path) -> None:
    results["summary"] = summarize(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    tmp.replace(path)


def build_report(result_files: list[Path] | None = None, docs: Path = DOCS, images: Path = IMAGES) -> None:
    """Rewrites the generated part of docs/benchmarks.md (between the markers) from the result files, with plots."""
    files = result_files or [RESULTS / name for name in REPORT_SECTIONS if (RESULTS / name).exists()]
    sections = []
    for path in files:
        results = json.loads(path.read_text())
        title = REPORT_SECTIONS.get(path.name, path.stem)
        sections.append(markdown(results, title))
        if len({row["na"] for row in results["summary"]["per_point"]}) > 1:
            for image in plots(results, images, path.stem):
                sections.append(f"![cost vs Na, {title}](img/{image.name})\n")
    generated = "\n".join(sections)
    begin, end = "<!-- BEGIN GENERATED TABLES -->", "<!-- END GENERATED TABLES -->"
    text = docs.read_text() if docs.exists() else f"# PAL efficiency benchmarks\n\n{begin}\n{end}\n"
    if begin not in text:
        text += f"\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1] if end in rest else ""
    docs.write_text(f"{head}{begin}\n\n{generated}\n{end}{tail}")


def refresh(path: Path) -> None:
    """Recomputes each point's analytical FLOPs (from its stored token layout) and the summary; raw data untouched."""
    import _flops

    results = json.loads(path.read_text())
    dims = _flops.llm_dims(results["settings"]["shape"]["llm"])
    for point in results["points"]:
        if point.get("tokens"):
            layout = _flops.layout_from_point(point)
            point["flops"] = _flops.variant_step(dims, layout, point["batch"], point["nt"])
    write(results, path)
    errors = validate(results)
    if errors:
        raise SystemExit("schema errors:\n  " + "\n  ".join(errors[:20]))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.refresh:
        refresh(args.refresh)
        print(f"refreshed {args.refresh}")
        return 0
    if args.report:
        build_report()
        print(f"wrote {DOCS}")
        return 0
    mode_name = "quick" if args.quick else "smoke" if args.smoke else "full"
    mode = dict(MODES[mode_name])
    device = args.device
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print(
                "error: --device cuda was requested but torch.cuda.is_available() is False (no GPU or a CPU-only "
                "torch build). Run without --device for the CPU benchmark.",
                file=sys.stderr,
            )
            return 2
    shape_name = args.shape or mode["shape"]
    dtype = args.dtype or ("bfloat16" if device.startswith("cuda") or shape_name == "paper" else "float32")
    variants = list(args.variants) if args.variants else list(VARIANTS)
    if "text" not in variants:
        variants.insert(0, "text")  # the reference of every ratio
    na_points = args.na if args.na is not None else mode["na"]
    large_na = mode["large_na"] if args.large_na is None else (args.large_na or None)
    repeats = {key: args.repeats for key in mode["repeats"]} if args.repeats is not None else mode["repeats"]
    on_gpu = device.startswith("cuda")  # the CPU time-budget cuts (fewer repeats, no e2e at large Na) do not apply
    large_repeats = repeats if args.repeats is not None or on_gpu else mode.get("large_repeats", repeats)
    max_e2e_na = (None if on_gpu else mode["max_e2e_na"]) if args.max_e2e_na is None else (args.max_e2e_na or None)
    custom = bool(args.customised) and mode_name != "smoke"
    if args.output is not None:
        output = args.output
    elif mode_name == "full" and shape_name == "paper":
        output = RESULTS / f"efficiency-paper-{'cuda' if on_gpu else 'cpu'}.json"
    elif custom:  # never overwrite the quick / full result with a run measured differently
        output = RESULTS / "efficiency-custom.json"
    else:
        output = RESULTS / ("efficiency-cpu.json" if mode_name == "full" else f"efficiency-{mode_name}.json")
    settings = {
        "shape_name": shape_name,
        "shape": SHAPES[shape_name],
        "nt": mode["nt"] if args.nt is None else args.nt,
        "na_points": na_points,
        "batch": mode["batch"] if args.batch is None else args.batch,
        "large_na": large_na,
        "variants": variants,
        "variant_help": {v: VARIANT_HELP[v] for v in variants},
        "repeats": repeats,
        "large_na_repeats": large_repeats,
        "max_e2e_na": max_e2e_na,
        "warmup": mode["warmup"],
        "decode_tokens": mode["decode_tokens"],
        "activation_sweep": mode["activation_sweep"],
        "pal_lal_fraction": args.pal_lal_fraction,
        "dtype": dtype,
        "seed": args.seed,
        "memory_limit_bytes": None
        if on_gpu
        else default_memory_limit()
        if args.memory_limit_gb is None
        else int(args.memory_limit_gb * 2**30),
        "customised": args.customised,
    }
    results = {
        "schema_version": SCHEMA_VERSION,
        "mode": "custom" if custom else mode_name,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "complete": False,
        "environment": environment(args, device),
        "settings": settings,
        "points": [],
        "summary": None,
    }
    os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy  # inherited by the fork server / worker processes
    results["environment"]["omp_wait_policy"] = args.omp_wait_policy
    allocator = allocator_library(args.allocator)
    launcher = Launcher(args.launcher or ("exec" if device.startswith("cuda") else "forkserver"), allocator)
    settings["launcher"] = launcher.kind
    results["environment"]["allocator"] = allocator or "system malloc"
    started = time.perf_counter()
    for na in na_points:
        batch = batch_for(na, settings["batch"], large_na)
        for variant in variants:
            spec = {
                "variant": variant,
                "na": na,
                "batch": batch,
                "nt": settings["nt"],
                "shape": settings["shape"],
                "device": device,
                "dtype": dtype,
                "threads": args.threads,
                "repeats": repeats if large_na is None or na <= large_na else large_repeats,
                "warmup": settings["warmup"],
                "warmup_max_na": None if on_gpu else large_na,  # GPU steps are short: warm up at every Na
                "max_e2e_na": max_e2e_na,
                "decode_tokens": settings["decode_tokens"],
                "seed": args.seed,
                "pal_lal_fraction": args.pal_lal_fraction,
                "activation_sweep": settings["activation_sweep"] if na == na_points[0] else None,
                "activation_sweep_variants": ["lal"],
                "memory_limit_bytes": settings["memory_limit_bytes"],
                "simulate_oom_na": args.simulate_oom_na,
            }
            point = run_point(spec, args.point_timeout, launcher)
            results["points"].append(point)
            step = point["timings"].get("llm_step_s")
            print(
                f"[{time.perf_counter() - started:6.0f}s] Na={na:>5} batch={batch} {variant:<10} {point['status']:<11}"
                + (f" LLM step {sorted(step)[len(step) // 2]:.3f}s" if step else "")
                + (f"  ({(point['reason'] or '').strip().splitlines()[-1][:150]})" if point["reason"] else ""),
                flush=True,
            )
            write(results, output)  # after every point
    results["complete"] = True
    results["environment"]["load_average_end"] = list(os.getloadavg())
    results["environment"]["wall_s"] = time.perf_counter() - started
    write(results, output)
    errors = validate(results)
    if errors:
        print("schema errors:\n  " + "\n  ".join(errors[:20]), file=sys.stderr)
        return 1
    print(f"wrote {output} ({results['environment']['wall_s']:.0f} s)")
    for target in results["summary"]["targets"]:
        verdict = {True: "pass", False: "FAIL", None: "n/a"}[target["pass"]]
        value = "–" if target["value"] is None else f"{target['value']:.3f}"
        print(f"  {verdict:<4} {target['description']}: {value} ({target['op']} {target['threshold']})")
    if mode_name == "full" and not args.no_docs and output.parent == RESULTS:
        build_report()
        print(f"wrote {DOCS} and plots in {IMAGES}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
