"""
`benchmarks/reproduce.py`: the smoke study (2 variants × 1 seed, tiny components) writes one valid JSON per run,
a rerun skips finished runs, `--report-only` rebuilds the results page; the recipe derivation and the verdict rule.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "reproduce.py"
sys.path.insert(0, str(ROOT / "benchmarks"))

import _reproduce_report as report  # noqa: E402
import _reproduce_study as study  # noqa: E402

from modeling_pal.data.synth import PAL_SYNTH_VERSION, pal_synth_version  # noqa: E402

VARIANTS = ("plits", "lal_frozen_ffn")
VERDICTS = ("reproduced", "not reproduced", "inconclusive")


def run_script(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    work = tmp_path_factory.mktemp("reproduce")
    args = ["--smoke", "--variants", ",".join(VARIANTS), "--seeds", "0", "--work-dir", str(work)]
    args += ["--results", str(work / "results"), "--docs", str(work / "results.md")]
    proc = run_script(*args)
    return {"work": work, "args": args, "stdout": proc.stdout}


def test_smoke_writes_one_valid_json_per_run(smoke):
    files = sorted((smoke["work"] / "results").glob("*.json"))
    assert [f.name for f in files] == sorted(f"{v}-seed0.json" for v in VARIANTS)
    for path in files:
        run = json.loads(path.read_text())
        assert report.validate(run) == [], path.name
        assert run["status"] == "ok" and run["smoke"] and run["error"] is None
        assert f"{run['variant']}-seed{run['seed']}.json" == path.name
        assert [stage["steps"] for stage in run["training"]["stages"]] == [study.SMOKE_STEPS] * 3
        assert run["training"]["step_time_median_s"] > 0
        # every score is recomputed from the stored per-task metrics
        assert run["scores"] == json.loads(json.dumps(report.run_scores(run["evaluation"]["splits"])))
        ids = run["evaluation"]["row_ids"]
        assert set(ids) == set(study.EVAL_SPLITS) and all(ids.values())
        assert [p["id"] for p in run["evaluation"]["predictions"]["test"]] == ids["test"]
    plits, frozen = (json.loads((smoke["work"] / "results" / f"{v}-seed0.json").read_text()) for v in VARIANTS)
    assert plits["model"]["encoders"] == {"whisper": "plits", "clap": "plits"} and plits["model"]["lal_layers"] == []
    assert frozen["model"]["encoders"] == {"whisper": "lal", "clap": "lal"}
    assert frozen["training"]["stages"][2]["train"] == ["connectors", "llm_attention"]
    assert set(frozen["training"]["stages"][2]["trainable"]) == {"connectors", "llm_attention"}
    assert plits["evaluation"]["row_ids"] == frozen["evaluation"]["row_ids"]  # the same fixed subset
    assert plits["protocol"] == frozen["protocol"]


def test_a_corrupt_or_schema_invalid_file_is_rejected(smoke):
    run = json.loads((smoke["work"] / "results" / "plits-seed0.json").read_text())
    del run["training"]
    assert any("training" in error for error in report.validate(run))
    run = {**json.loads((smoke["work"] / "results" / "plits-seed0.json").read_text()), "status": "done"}
    assert report.validate(run)


def test_rerun_skips_finished_runs(smoke):
    files = sorted((smoke["work"] / "results").glob("*.json"))
    before = {path: path.read_bytes() for path in files}
    proc = run_script(*smoke["args"])
    assert proc.stdout.count("finished, skipped") == len(VARIANTS)
    assert "training" not in proc.stdout
    assert {path: path.read_bytes() for path in files} == before


def test_report_only_writes_caveat_and_a_verdict_per_claim(smoke, tmp_path):
    docs = tmp_path / "results.md"
    run_script("--report-only", "--results", str(smoke["work"] / "results"), "--docs", str(docs), timeout=60)
    text = docs.read_text()
    first = text.split("\n## ")[0]
    assert "Scale caveat" in first and "tiny" in first and "synthetic" in first and "CPU" in first
    assert "time-limited" in first
    for claim in report.CLAIMS:
        line = next(line for line in text.splitlines() if line.startswith(f"- **{claim.text}: "))
        assert re.match(rf"- \*\*{re.escape(claim.text)}: ({'|'.join(VERDICTS)})\.\*\*", line), line
    assert "Smoke run" in text
    for variant in VARIANTS:
        assert f"| `{variant}` | 1 |" in text  # seeds finished, per variant
    assert "## Run files" in text


def test_derived_recipes_override_only_model_and_stage_groups():
    base = study.base_recipe()
    for variant, spec in study.VARIANTS.items():
        recipe = study.derive_recipe(base, variant, seed=7)
        assert recipe["seed"] == 7
        for section in ("data", "training", "lora", "components"):
            assert recipe.get(section) == base.get(section), (variant, section)
        for stage, original in zip(recipe["stages"], base["stages"]):
            assert {k: v for k, v in stage.items() if k != "train"} == {
                k: v for k, v in original.items() if k != "train"
            }
        assert list(recipe["model"]["audio_encoders"]) == list(spec.encoders)
        assert recipe["model"]["integration"] == spec.integration
    assert "lal_start_layer" not in study.derive_recipe(base, "plits", 0)["model"]["config"]
    assert study.derive_recipe(base, "lal_layer0", 0)["model"]["config"]["lal_start_layer"] == 0
    assert study.derive_recipe(base, "lal", 0)["model"]["config"] == base["model"]["config"]
    frozen = study.derive_recipe(base, "lal_frozen_ffn", 0)["stages"]
    assert frozen[0]["train"] == base["stages"][0]["train"]
    assert [stage["train"] for stage in frozen[1:]] == [["connectors", "llm_attention"]] * 2


def test_verdict_rule():
    stat = report.Stat
    better = report.compare(stat([0.60, 0.62, 0.64]), stat([0.40, 0.42, 0.44]), "better", chance=0.2)
    assert better["verdict"] == "reproduced" and better["diff"] == pytest.approx(0.2)
    worse = report.compare(stat([0.40, 0.42, 0.44]), stat([0.60, 0.62, 0.64]), "better", chance=0.2)
    assert worse["verdict"] == "not reproduced"
    noisy = report.compare(stat([0.3, 0.6, 0.45]), stat([0.4, 0.5, 0.42]), "better", chance=0.2)
    assert noisy["verdict"] == "inconclusive"
    parity = report.compare(stat([0.50, 0.51, 0.52]), stat([0.505, 0.515, 0.52]), "at_least", chance=0.2)
    assert parity["verdict"] == "reproduced"
    too_noisy = report.compare(stat([0.3, 0.7, 0.5]), stat([0.4, 0.6, 0.5]), "at_least", chance=0.1)
    assert too_noisy["verdict"] == "inconclusive" and "too noisy" in too_noisy["reason"]
    at_chance = report.compare(stat([0.50, 0.51, 0.50]), stat([0.40, 0.41, 0.40]), "better", chance=0.5)
    assert at_chance["verdict"] == "inconclusive" and "chance" in at_chance["reason"]
    one_seed = report.compare(stat([0.9]), stat([0.1]), "better")
    assert one_seed["verdict"] == "inconclusive" and "seeds" in one_seed["reason"]


def test_bad_option_values_exit_2(capsys):
    import reproduce

    for option in (["--rows-per-task", "0"], ["--rows-per-task", "-3"], ["--seeds", "abc"], ["--seeds", "-1"]):
        with pytest.raises(SystemExit) as exit_info:
            reproduce.parse_args(["--smoke", *option])
        assert exit_info.value.code == 2 and option[0] in capsys.readouterr().err, option
    args = reproduce.parse_args(["--smoke", "--variants", "lal,lal,plits", "--seeds", "1,1,0"])
    assert args.variants == ["lal", "plits"] and args.seeds == [1, 0]


def test_smoke_inputs_survive_an_interrupted_build(tmp_path, monkeypatch):
    """A build killed after dataset_dict.json was written (splits incomplete) does not block later runs."""
    import datasets

    original = datasets.DatasetDict.save_to_disk

    def killed_half_way(self, path, **kwargs):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "dataset_dict.json").write_text(json.dumps({"splits": list(self)}))
        raise KeyboardInterrupt

    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", killed_half_way)
    with pytest.raises(KeyboardInterrupt):
        study.build_smoke_inputs(tmp_path)
    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", original)
    data, components = study.build_smoke_inputs(tmp_path)
    assert set(datasets.load_from_disk(str(data))) >= {"train", *study.EVAL_SPLITS}
    assert (components / "clap" / "preprocessor_config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["components", "data"]  # no temporary left
    # a directory left incomplete by an earlier version (built in place) is rebuilt too
    shutil.rmtree(data / "train")
    data, _ = study.build_smoke_inputs(tmp_path)
    assert len(datasets.load_from_disk(str(data))["train"]) == study.SMOKE_SYNTH_SIZE
    # so is a PAL-Synth of another generator version, with the components pretrained on it
    stale = datasets.load_from_disk(str(data))
    for split in stale.values():
        split.info.version = None
    stale.save_to_disk(str(tmp_path / "stale"))
    shutil.rmtree(data)
    (tmp_path / "stale").rename(data)
    (components / "stale").touch()
    data, components = study.build_smoke_inputs(tmp_path)
    assert pal_synth_version(datasets.load_from_disk(str(data))) == PAL_SYNTH_VERSION
    assert not (components / "stale").exists()
