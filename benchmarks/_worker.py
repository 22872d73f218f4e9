"""
One benchmark point (one variant at one Na) in its own process: `python _worker.py SPEC.json OUT.json`.

Writes OUT.json after every measurement, so a point killed half-way (the kernel's OOM killer) keeps what it measured.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import _flops  # noqa: E402
import torch  # noqa: E402
from _variants import Unavailable, audio_seconds, build  # noqa: E402

OOM_MARKERS = ("out of memory", "can't allocate memory", "not enough memory", "bad_alloc", "cannot allocate memory")


class OutOfMemory(Exception):
    pass


def is_oom(error: BaseException) -> bool:
    if isinstance(error, (MemoryError, torch.OutOfMemoryError, OutOfMemory)):
        return True
    return isinstance(error, RuntimeError) and any(marker in str(error).lower() for marker in OOM_MARKERS)


class Clock:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def time(self, fn) -> float:
        """Wall seconds of `fn()`; the process CPU seconds it used go to `self.last_cpu`."""
        self.sync()
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        self.sync()
        self.last_cpu = time.process_time() - cpu
        return time.perf_counter() - start

    def series(self, fn, count: int) -> tuple[list[float], list[float]]:
        """`count` timed calls: (wall seconds, process CPU seconds)."""
        walls, cpus = [], []
        for _ in range(count):
            walls.append(self.time(fn))
            cpus.append(self.last_cpu)
        return walls, cpus


def activation_bytes(model: torch.nn.Module, forward, device: torch.device) -> dict:
    """
    Memory the forward keeps for backward. CPU: bytes of the tensors saved for backward (`saved_tensors_hooks`),
    deduplicated by storage, parameters and buffers excluded (raw = summed per saved tensor, no dedupe).
    CUDA: `max_memory_allocated` during the forward minus the allocation before it.
    """
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        loss = forward()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        kept = torch.cuda.memory_allocated() - before
        del loss
        return {
            "activation_bytes": int(peak),
            "activation_bytes_raw": int(kept),
            "method": "cuda_max_memory_allocated",
        }
    excluded = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    storages: dict[int, int] = {}
    raw = [0, 0]

    def pack(tensor):
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return tensor
        pointer = storage.data_ptr()
        if pointer in excluded or storage.nbytes() == 0:
            return tensor
        raw[0] += tensor.numel() * tensor.element_size()
        raw[1] += 1
        storages[pointer] = max(storages.get(pointer, 0), storage.nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = forward()
    del loss
    return {
        "activation_bytes": int(sum(storages.values())),
        "activation_bytes_raw": int(raw[0]),
        "saved_tensors": raw[1],
        "method": "saved_tensors_hooks",
    }


class StepTimer:
    """A `LogitsProcessor` that stamps the time of every generation step (after each forward)."""

    def __init__(self, clock: Clock):
        self.clock, self.stamps, self.cpu_stamps = clock, [], []

    def __call__(self, input_ids, scores):
        self.clock.sync()
        self.stamps.append(time.perf_counter())
        self.cpu_stamps.append(time.process_time())
        return scores


def cache_bytes(cache, audio_positions: list[int]) -> dict:
    """Bytes of the generation cache, and of its audio part (PLITS placeholder positions + LAL audio K/V store)."""
    total = audio = 0
    for layer in getattr(cache, "layers", []):
        for tensor in (layer.keys, layer.values):
            if tensor is None or not torch.is_tensor(tensor) or tensor.dim() != 4:
                continue
            size = tensor.numel() * tensor.element_size()
            total += size
            audio += size * len(audio_positions) // tensor.shape[2]
    store = getattr(cache, "pal_audio_store", None)
    lal = 0
    for keys, values in (store.audio_key_values() if store is not None else {}).values():
        lal += keys.numel() * keys.element_size() + values.numel() * values.element_size()
    return {"total_bytes": int(total + lal), "audio_bytes": int(audio + lal), "lal_store_bytes": int(lal)}


def run(spec: dict, result: dict, save) -> None:
    device = torch.device(spec["device"])
    dtype = getattr(torch, spec["dtype"])
    torch.set_num_threads(spec["threads"])
    clock = Clock(device)
    repeats, warmup = spec["repeats"], spec["warmup"]
    shape, variant, na, batch, nt = spec["shape"], spec["variant"], spec["na"], spec["batch"], spec["nt"]
    if spec.get("simulate_oom_na") is not None and variant != "text" and na >= spec["simulate_oom_na"]:
        raise OutOfMemory(f"simulated out-of-memory at Na={na} (--simulate-oom-na test hook)")

    def make(points_na: int):
        return build(variant, shape, points_na, batch, nt, device, dtype, spec["seed"], spec["pal_lal_fraction"])

    bench = make(na)
    model = bench.model
    layout = bench.layout
    result["tokens"] = {
        "seq_len": layout["seq_len"],
        "text_positions": nt,
        "plits_tokens": layout["plits_tokens"],
        "lal_columns": layout["lal_columns"],
        "na": layout["plits_tokens"] + layout["lal_columns"],
        "lal_layers": layout.get("lal_layers", []),
        "routes": [
            {
                **{k: route[k] for k in ("name", "integration", "projector", "downsample", "width", "window_tokens")},
                "windows": route["windows"],
                "valid_tokens": sum(route["valid"]),
                "plits_tokens": route["plits"],
                "lal_columns": route["lal"],
                "audio_seconds": audio_seconds(route, shape),
                **{k: route[k] for k in ("queries", "depth", "valid_frames") if k in route},
            }
            for route in layout["routes"]
        ],
    }
    if result["tokens"]["na"] != na and variant != "text":
        raise RuntimeError(f"layout gives Na={result['tokens']['na']}, expected {na}")
    dims = _flops.llm_dims(shape["llm"])
    result["flops"] = _flops.variant_step(dims, layout, batch, nt)
    assert result["flops"] == _flops.variant_step(dims, _flops.layout_from_point(result), batch, nt)
    result["params"] = {
        "total": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    save()

    # activation memory of the LLM-side training forward
    model.train()
    result["memory"] = activation_bytes(model, bench.llm_loss, device)
    save()

    # LLM-side and end-to-end training steps (AdamW over every trainable parameter; the fused kernel, as Trainer's
    # default `adamw_torch_fused`: the per-tensor one costs ~5x more, a fixed cost that would mask the attention's)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-6, fused=True)

    def step(loss_fn):
        def run_step():
            optimizer.zero_grad(set_to_none=True)
            loss_fn().backward()
            optimizer.step()

        return run_step

    llm_step = step(bench.llm_loss)
    warmup_steps = warmup if spec.get("warmup_max_na") is None or na <= spec["warmup_max_na"] else 0
    timings, cpu = result["timings"], result["timings_cpu"]
    timings["llm_warmup_step_s"], cpu["llm_warmup_step_s"] = clock.series(llm_step, warmup_steps)
    timings["llm_step_s"], cpu["llm_step_s"] = clock.series(llm_step, repeats["step"])
    save()
    if variant != "text":
        bench.encoder_forward()  # warm-up, and checks that the raw inputs give exactly the precomputed layout
        timings["encoder_forward_s"], cpu["encoder_forward_s"] = clock.series(bench.encoder_forward, 1)
        save()
    skip_e2e = spec.get("max_e2e_na") is not None and na > spec["max_e2e_na"]
    if skip_e2e:
        result["skipped"] = {
            "e2e_step_s": f"not run above Na={spec['max_e2e_na']} (time budget of the sweep)",
            "prefill_e2e_s": f"not run above Na={spec['max_e2e_na']} (time budget of the sweep)",
        }
    else:
        e2e_step = step(bench.e2e_loss)
        timings["e2e_step_s"], cpu["e2e_step_s"] = clock.series(e2e_step, repeats["e2e"])
    del optimizer
    optimizer = None
    model.zero_grad(set_to_none=True)
    save()

    # generation: prefill latency and cached decoding
    model.eval()
    decode = spec["decode_tokens"]

    def generate(e2e: bool, new_tokens: int):
        timer = StepTimer(clock)
        clock.sync()
        start = time.perf_counter()
        out = bench.generate(
            e2e,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
            logits_processor=[timer],
            return_dict_in_generate=True,
        )
        stamps, cpu_stamps = timer.stamps, timer.cpu_stamps
        steps = [b - a for a, b in zip(stamps, stamps[1:])]
        return stamps[0] - start, steps, [b - a for a, b in zip(cpu_stamps, cpu_stamps[1:])], out

    generate(False, 1)  # warm-up
    prefill, steps, cpu_steps = [], [], []
    for _ in range(repeats["generate"]):
        first, rest, cpu_rest, out = generate(False, decode + 1)
        prefill.append(first)
        steps.extend(rest)
        cpu_steps.extend(cpu_rest)
    result["timings"]["prefill_s"] = prefill
    result["timings"]["decode_step_s"] = steps
    result["timings_cpu"]["decode_step_s"] = cpu_steps
    result["kv_cache"] = cache_bytes(out.cache, bench.audio_positions())
    result["kv_cache"]["prompt_positions"] = layout["seq_len"]
    result["kv_cache"]["generated_positions"] = decode + 1
    del out
    save()
    if not skip_e2e:
        result["timings"]["prefill_e2e_s"] = [generate(True, 1)[0] for _ in range(repeats["prefill_e2e"])]
        save()

    # Last: building the sweep's models before the timed steps left the allocator in a state that made this
    # variant's steps up to 1.6x slower than in a fresh process
    if spec.get("activation_sweep") and variant in spec.get("activation_sweep_variants", ()):
        sweep = []
        for point in spec["activation_sweep"]:
            other = bench if point == na else make(point)
            other.model.train()
            sweep.append({"na": point, "batch": batch, **activation_bytes(other.model, other.llm_loss, device)})
            del other
        result["memory"]["sweep"] = sweep
        save()


def allocator_in_use() -> str:
    """`tcmalloc` when this process runs with tcmalloc preloaded (`efficiency.py --allocator`), else `system`."""
    maps = Path("/proc/self/maps")
    return "tcmalloc" if maps.exists() and "libtcmalloc" in maps.read_text() else "system"


def main(spec_path: str, out_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    if spec.get("memory_limit_bytes"):
        limit = int(spec["memory_limit_bytes"])
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    result = {
        "variant": spec["variant"],
        "na": spec["na"],
        "batch": spec["batch"],
        "nt": spec["nt"],
        "status": "ok",
        "reason": None,
        "pid": os.getpid(),
        "allocator": allocator_in_use(),
        "timings": {},
        "timings_cpu": {},
        "memory": {},
        "kv_cache": {},
        "tokens": {},
        "flops": {},
        "params": {},
    }
    out = Path(out_path)

    def save():
        out.write_text(json.dumps(result, indent=1))

    started = time.perf_counter()
    try:
        run(spec, result, save)
    except Unavailable as error:
        result["status"], result["reason"] = "unavailable", str(error)
    except BaseException as error:  # noqa: BLE001 - a point must report, whatever happened
        if is_oom(error):
            result["status"], result["reason"] = "oom", f"{type(error).__name__}: {str(error)[:300]}"
        else:
            result["status"] = "error"
            result["reason"] = "".join(traceback.format_exception(error)[-6:])[-2000:]
    result["wall_s"] = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_s"] = usage.ru_utime + usage.ru_stime
    result["max_rss_bytes"] = usage.ru_maxrss * 1024
    save()
    return 0


def main_capturing_stderr(spec_path: str, out_path: str, stderr_path: str) -> int:
    """`main` with this process's stderr (fd 2: Python, libgomp, the allocator) going to `stderr_path`."""
    sys.stderr.flush()
    with open(stderr_path, "wb", buffering=0) as log:
        os.dup2(log.fileno(), 2)
    return main(spec_path, out_path)


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
