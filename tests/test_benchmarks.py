"""
The efficiency benchmark (benchmarks/efficiency.py): a smoke run (tiny shapes, 1 repeat, one simulated OOM point),
its JSON against the documented schema, and every derived number recomputed from the raw measurements in the file.
No timing assertions: timings on shared CPUs are noise.
"""

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import _report  # noqa: E402

SMOKE_NA = (48, 96)
OOM_NA = 96


def median(values):
    return statistics.median(values) if values else None


def lookup(results: dict, reference: dict):
    """Independent resolver: the point's nested value, a list entering as its median."""
    matches = [p for p in results["points"] if p["variant"] == reference["variant"] and p["na"] == reference["na"]]
    assert len(matches) == 1, reference
    value = matches[0]
    for key in reference["path"].split("."):
        value = value[key]
    return median(value) if isinstance(value, list) else value


def recompute(formula: str, v: dict) -> float:
    if formula == "a/b":
        return v["a"] / v["b"]
    if formula == "(a-b)/(c*b/d)":
        return (v["a"] - v["b"]) / (v["c"] * v["b"] / v["d"])
    if formula == "(a/b)/(c/d)":
        return (v["a"] / v["b"]) / (v["c"] / v["d"])
    raise AssertionError(f"unknown formula {formula}")


def check_results(results: dict) -> None:
    """Schema, and every derived value of the summary recomputed from the raw data of the same file."""
    assert _report.validate(results) == []
    summary = results["summary"]

    for row in summary["per_point"]:
        point = next(p for p in results["points"] if p["variant"] == row["variant"] and p["na"] == row["na"])
        if point["status"] != "ok":
            assert row["llm_step_s"] is None
            continue
        for key, raw in (
            ("llm_step_s", point["timings"].get("llm_step_s")),
            ("e2e_step_s", point["timings"].get("e2e_step_s")),
            ("prefill_s", point["timings"].get("prefill_s")),
            ("decode_step_s", point["timings"].get("decode_step_s")),
        ):
            assert row[key] == pytest.approx(median(raw), rel=1e-12) if raw else row[key] is None
        assert row["llm_samples_per_s"] == pytest.approx(point["batch"] / median(point["timings"]["llm_step_s"]))
        assert row["activation_bytes"] == point["memory"]["activation_bytes"]
        assert row["flops_audio_path"] == pytest.approx(point["flops"]["audio_path"])
        if "predicted_audio_path_s" in row:
            text = next(p for p in results["points"] if p["variant"] == "text" and p["na"] == row["na"])
            flop_rate = text["flops"]["total"] / median(text["timings"]["llm_step_s"])
            assert row["predicted_audio_path_s"] == pytest.approx(point["flops"]["audio_path"] / flop_rate)
            assert row["measured_audio_path_s"] == pytest.approx(
                median(point["timings"]["llm_step_s"]) - median(text["timings"]["llm_step_s"])
            )

    assert summary["ratios"], "no ratios computed"
    for ratio in summary["ratios"]:
        values = {key: lookup(results, reference) for key, reference in ratio["inputs"].items()}
        assert ratio["value"] == pytest.approx(recompute(ratio["formula"], values), rel=1e-12), ratio["name"]

    for fit in summary["fits"]:
        lal = [p for p in results["points"] if p["variant"] == "lal" and p["status"] == "ok"]
        raw = {e["na"]: e["activation_bytes"] / e["batch"] for p in lal for e in p["memory"].get("sweep", [])}
        for p in lal:
            raw.setdefault(p["na"], p["memory"]["activation_bytes"] / p["batch"])
        assert fit["x"] == sorted(raw) and fit["y"] == [raw[x] for x in sorted(raw)]
        slope, intercept = np.polyfit(fit["x"], fit["y"], 1)
        assert fit["slope"] == pytest.approx(slope, rel=1e-6)
        assert fit["intercept"] == pytest.approx(intercept, rel=1e-6, abs=1.0)
        predicted = np.polyval([slope, intercept], fit["x"])
        y = np.asarray(fit["y"])
        r2 = 1 - ((y - predicted) ** 2).sum() / ((y - y.mean()) ** 2).sum()
        assert fit["r2"] == pytest.approx(r2, abs=1e-9)

    fit_names = {fit["name"]: fit for fit in summary["fits"]}
    na_points = sorted({p["na"] for p in results["points"]})
    closest = 500 if 500 in na_points else None
    for target in summary["targets"]:
        uses = [
            r["value"]
            for r in summary["ratios"]
            if r["name"] in target["uses"] and (target.get("scope") != "target_na" or r["na"] == closest)
        ]
        uses += [fit_names[name]["r2"] for name in target["uses"] if name in fit_names]
        if not uses:
            assert target["value"] is None and target["pass"] is None
            continue
        worst = min(uses) if target["op"] == ">=" else max(uses)
        assert target["value"] == pytest.approx(worst)
        cpu = [
            r["value"]
            for r in summary["ratios"]
            if r["name"] == f"{target['name']}_cputime" and (target.get("scope") != "target_na" or r["na"] == closest)
        ]
        if cpu:
            assert target["value_cputime"] == pytest.approx(min(cpu) if target["op"] == ">=" else max(cpu))
        expected = worst >= target["threshold"] if target["op"] == ">=" else worst <= target["threshold"]
        assert target["pass"] is expected


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    command = [
        sys.executable, str(BENCH / "efficiency.py"), "--smoke", "--output", str(out),
        "--simulate-oom-na", str(OOM_NA),
    ]  # fmt: skip
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_smoke_run_is_complete_and_valid(smoke):
    assert smoke["complete"] and smoke["mode"] == "smoke"
    variants = smoke["settings"]["variants"]
    assert set(variants) == {"text", "plits", "lal", "pal", "pal_plits", "hybrid", "qwen2audio"}
    assert {(p["variant"], p["na"]) for p in smoke["points"]} == {(v, na) for v in variants for na in SMOKE_NA}
    # each point ran in its own process
    pids = [p["pid"] for p in smoke["points"] if "pid" in p]
    assert len(pids) == len(smoke["points"]) and len(set(pids)) == len(pids)
    # ... with tcmalloc preloaded (`make setup` installs it), as the run records
    assert smoke["environment"]["allocator"].startswith("libtcmalloc")
    assert {p["allocator"] for p in smoke["points"]} == {"tcmalloc"}
    check_results(smoke)


def test_smoke_points_have_exact_token_counts_and_all_measurements(smoke):
    nt = smoke["settings"]["nt"]
    for point in smoke["points"]:
        if point["na"] == OOM_NA and point["variant"] != "text":
            assert point["status"] == "oom" and "simulated" in point["reason"]
            continue
        assert point["status"] == "ok", (point["variant"], point["reason"])
        assert point["batch"] == (1 if point["na"] > smoke["settings"]["large_na"] else smoke["settings"]["batch"])
        tokens = point["tokens"]
        assert tokens["seq_len"] == nt + tokens["plits_tokens"]
        if point["variant"] != "text":
            assert tokens["na"] == point["na"] == tokens["plits_tokens"] + tokens["lal_columns"]
        for key in ("llm_step_s", "e2e_step_s", "prefill_s", "prefill_e2e_s", "decode_step_s"):
            assert point["timings"][key], (point["variant"], key)
        assert point["memory"]["activation_bytes"] > 0
        assert point["flops"]["total"] > 0
    by = {(p["variant"], p["na"]): p for p in smoke["points"]}
    na = SMOKE_NA[0]
    assert by[("lal", na)]["tokens"]["plits_tokens"] == 0 and by[("lal", na)]["tokens"]["seq_len"] == nt
    assert by[("pal", na)]["tokens"]["plits_tokens"] + by[("pal", na)]["tokens"]["lal_columns"] == na
    assert by[("hybrid", na)]["tokens"]["plits_tokens"] > 0 and by[("hybrid", na)]["tokens"]["lal_columns"] > 0
    # LAL keeps audio K/V only in its own store, PLITS only at placeholder positions of every layer
    assert by[("lal", na)]["kv_cache"]["audio_bytes"] == by[("lal", na)]["kv_cache"]["lal_store_bytes"] > 0
    assert by[("plits", na)]["kv_cache"]["lal_store_bytes"] == 0 < by[("plits", na)]["kv_cache"]["audio_bytes"]
    assert by[("text", na)]["kv_cache"]["audio_bytes"] == 0
    assert by[("lal", na)]["memory"]["sweep"]


def test_flop_model_matches_hand_count():
    import _flops

    llm = dict(hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
               vocab_size=10)  # fmt: skip
    dims = _flops.llm_dims(llm)
    assert dims == {"d": 8, "layers": 2, "dq": 8, "dkv": 4, "ff": 16, "vocab": 10}
    # per row: q 2·8·8 + k,v 2·2·8·4 + o 2·8·8 + FFN 2·3·8·16 = 128 + 128 + 128 + 768
    assert _flops.dense_per_row(dims) == 1152
    lal = _flops.lal_path(dims, batch=1, queries=3, columns=5, num_lal_layers=1, enc_width=6)
    assert lal == {
        "projector": 2 * 5 * 2 * 6 * 8,
        "kv_projections": 3 * 5 * 2 * 8 * 8,
        "scores_and_av": 3 * 4 * 8 * 3 * 5,
    }
    layout = {"plits_tokens": 0, "num_lal_layers": 1, "routes": [{"integration": "lal", "lal": 5, "width": 6}]}
    step = _flops.variant_step(dims, layout, batch=1, nt=3)
    assert step["audio_path"] == pytest.approx(sum(lal.values()))
    assert step["total"] - step["text"] == pytest.approx(step["audio_path"])
    # with PLITS tokens in the sequence (PAL, hybrid) they query the LAL columns too
    pal = {**layout, "plits_tokens": 2}
    scores = _flops.variant_step(dims, pal, batch=1, nt=3)["audio_breakdown"]["scores_and_av"]
    assert scores == 3 * 4 * 8 * (3 + 2) * 5


def test_committed_results_validate_and_recompute():
    files = sorted((BENCH / "results").glob("efficiency-*.json"))
    if not files:
        pytest.skip("no committed benchmark results")
    for path in files:
        check_results(json.loads(path.read_text()))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cuda_request_without_cuda_fails_clearly(tmp_path):
    command = [sys.executable, str(BENCH / "efficiency.py"), "--device", "cuda", "--shape", "paper"]
    command += ["--output", str(tmp_path / "x.json")]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "cuda" in proc.stderr.lower() and "is_available" in proc.stderr
    assert not (tmp_path / "x.json").exists()


def test_paper_shapes_build_on_meta_device():
    """
    The paper's shapes are valid configs: Llama-3.2-1B + Whisper-large-v3 encoder + CLAP HTSAT (no weights), built
    as the benchmark builds them: directly on the run's device, in its dtype.
    """
    from _variants import SHAPES, clap_config, instantiate, llama_config, whisper_config

    from modeling_pal import PalConfig, PalForConditionalGeneration

    shape = SHAPES["paper"]
    config = PalConfig(
        text_config=llama_config(shape),
        audio_config_0=whisper_config(shape),
        audio_config_1=clap_config(shape),
        audio_encoders=[{"name": "whisper", "integration": "plits"}, {"name": "clap", "integration": "lal"}],
        lal_start_layer=shape["lal_start_layer"],
        audio_token_id=shape["llm"]["vocab_size"] - 2,
        audio_placeholder_token_id=shape["llm"]["vocab_size"] - 1,
    )
    model = instantiate(PalForConditionalGeneration._from_config, config, "meta", torch.bfloat16)
    assert {(p.device.type, p.dtype) for p in model.parameters()} == {("meta", torch.bfloat16)}
    assert {b.device.type for b in model.buffers()} == {"meta"}  # nothing left on the CPU of a GPU run
    llm_params = sum(p.numel() for p in model.model.language_model.parameters())
    assert 1.1e9 < llm_params < 1.3e9  # Llama-3.2-1B: 1.24 B with tied embeddings
    assert config.lal_layers == list(range(4, 16))
    assert math.isclose(sum(p.numel() for p in model.model.audio_towers[0].parameters()) / 1e6, 635, rel_tol=0.02)


# ----------------------------------------------------------------------------------------------------------------------
# Command line: custom runs, argument validation, crash reasons (no measurement: the launcher is faked or crashes)
# ----------------------------------------------------------------------------------------------------------------------


class FakeLauncher:
    def __init__(self, kind, allocator):
        self.kind = kind


def fake_point(spec, timeout, launcher):
    empty = {"timings": {}, "timings_cpu": {}, "memory": {}, "kv_cache": {}, "tokens": {}, "flops": {}, "params": {}}
    return {**{key: spec[key] for key in ("variant", "na", "batch", "nt")}, **empty, "status": "error", "reason": "x"}


@pytest.fixture
def dry_main(monkeypatch, tmp_path):
    """`efficiency.main` with results under tmp_path and every point a fake error (no process, no timing)."""
    import efficiency

    monkeypatch.setattr(efficiency, "RESULTS", tmp_path)
    monkeypatch.setattr(efficiency, "Launcher", FakeLauncher)
    monkeypatch.setattr(efficiency, "run_point", fake_point)
    return efficiency.main


@pytest.mark.parametrize(
    "option",
    [
        ["--repeats", "1"], ["--max-e2e-na", "1"], ["--pal-lal-fraction", "0.9"], ["--dtype", "bfloat16"],
        ["--memory-limit-gb", "4"], ["--point-timeout", "1"], ["--threads", "3"], ["--seed", "1"],
        ["--allocator", "system"], ["--na", "48"], ["--variants", "lal"],
    ],
)  # fmt: skip
def test_quick_run_with_a_measurement_option_is_custom_and_keeps_the_quick_file(dry_main, tmp_path, option):
    dry_main(["--quick", "--variants", "lal", "--na", "48", *option] if option[0] == "--na" else ["--quick", *option])
    assert not (tmp_path / "efficiency-quick.json").exists()
    results = json.loads((tmp_path / "efficiency-custom.json").read_text())
    assert results["mode"] == "custom" and option[0][2:].replace("-", "_") in results["settings"]["customised"]


def test_plain_quick_run_is_quick_and_duplicates_are_dropped(dry_main, tmp_path):
    dry_main(["--quick", "--pal-lal-fraction", "0.5"])  # an option at its default value is no customisation
    results = json.loads((tmp_path / "efficiency-quick.json").read_text())
    assert results["mode"] == "quick" and results["settings"]["customised"] == []
    dry_main(["--quick", "--variants", "lal,lal,plits", "--na", "48,48", "--output", str(tmp_path / "d.json")])
    results = json.loads((tmp_path / "d.json").read_text())
    assert [(p["variant"], p["na"]) for p in results["points"]] == [("text", 48), ("lal", 48), ("plits", 48)]


@pytest.mark.parametrize(
    "option",
    [
        ["--na", "0"], ["--na", "-5"], ["--na", "abc"], ["--na", "48,0"], ["--batch", "-2"], ["--batch", "0"],
        ["--repeats", "-1"], ["--repeats", "0"], ["--nt", "0"], ["--memory-limit-gb", "0"],
        ["--memory-limit-gb", "-1"], ["--point-timeout", "-1"], ["--large-na", "-1"], ["--max-e2e-na", "-1"],
        ["--threads", "0"], ["--pal-lal-fraction", "1.5"], ["--variants", "lal,nope"],
    ],
)  # fmt: skip
def test_bad_option_values_exit_2_with_a_message(capsys, option):
    import efficiency

    with pytest.raises(SystemExit) as exit_info:
        efficiency.parse_args(["--smoke", *option])
    assert exit_info.value.code == 2
    assert option[0] in capsys.readouterr().err


def test_zero_keeps_its_documented_meaning():
    import efficiency

    args = efficiency.parse_args(["--large-na", "0", "--max-e2e-na", "0"])
    assert args.large_na == 0 and args.max_e2e_na == 0


def test_crash_reasons(tmp_path):
    """Forkserver workers' stderr is kept; allocation failures are 'oom'; a SIGKILL is worded as likely OOM."""
    import efficiency

    class Crash:
        def __init__(self, returncode, stderr):
            self.result = returncode, stderr

        def run(self, spec_path, out_path, timeout):
            return self.result

    spec = {"variant": "lal", "na": 48, "batch": 2, "nt": 16}
    gomp = "libgomp: Thread creation failed: Cannot allocate memory\n"
    point = efficiency.run_point(spec, 10, Crash(1, gomp))
    assert point["status"] == "oom" and "Thread creation failed" in point["reason"]
    point = efficiency.run_point(spec, 10, Crash(-9, ""))
    assert point["status"] == "oom" and "most likely the kernel's OOM killer" in point["reason"]
    point = efficiency.run_point(spec, 10, Crash(1, "Traceback ...\nValueError: boom\n"))
    assert point["status"] == "error" and "ValueError: boom" in point["reason"]

    # a real forkserver worker that dies before it writes a result: its traceback is the reason
    launcher = efficiency.Launcher("forkserver", None)
    (tmp_path / "spec.json").write_text("{}")
    returncode, stderr = launcher.run(tmp_path / "spec.json", tmp_path / "out.json", 120)
    assert returncode == 1 and "KeyError: 'variant'" in stderr


def test_device_paper_run_exits_with_the_paper_runs_status(tmp_path):
    """The device tool reports the script's status: a paper run that failed or ran out of time must not read as 0."""
    python = tmp_path / "python"
    python.write_text(
        "#!/usr/bin/env bash\n"
        'case "$1" in -m | -c) exit 0 ;; -) cat >/dev/null; exit 0 ;; esac\n'
        'case " $* " in *" --smoke "*) exit 0 ;; esac\n'
        "exit 3\n"  # the paper run
    )
    python.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "OUT": str(tmp_path), "PYTHON": str(python), "DEPS": str(tmp_path / "deps")}
    run = subprocess.run(
        ["bash", str(BENCH / "device_paper_run.sh")], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert "paper run: exit 3" in run.stdout
    assert run.returncode == 3


def test_device_wheels_names_a_package_missing_from_the_venv(tmp_path):
    """`pip show` fails for a package the venv lacks: the script says which, instead of exiting without a word."""
    pip = tmp_path / "pip"
    pip.write_text("#!/usr/bin/env bash\nexit 1\n")
    pip.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "PIP": str(pip), "DEST": str(tmp_path / "wheels")}
    run = subprocess.run(["bash", str(BENCH / "device_wheels.sh")], env=env, capture_output=True, text=True)
    assert run.returncode == 1
    assert "transformers is not installed in the venv" in run.stderr
