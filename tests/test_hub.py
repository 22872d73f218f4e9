"""The Hub path, tested for real offline: a dry-run repository placed in a Hub cache and loaded by repo id; the model
card and `examples/push_to_hub.py` (Hub checked first, temporary folder removed, `--base-model` validated)."""

import contextlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from encoder_fixtures import *  # noqa: F403
from huggingface_hub import HfApi, ModelCard, hf_api
from transformers import AutoConfig

from modeling_pal import PalForConditionalGeneration, PalProcessor
from modeling_pal.hub import (
    PICKLE_SUFFIXES,
    base_models,
    build_model_card,
    evaluation_table,
    upload_repository,
    write_repository,
)

REPO_ID = "org/pal"
BASE_MODELS = {"llm": "meta-llama/Llama-3.2-1B-Instruct", "whisper": "openai/whisper-large-v3"}
COMMIT = "0123456789abcdef0123456789abcdef01234567"
PUSH_SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "push_to_hub.py"

LOAD_BY_REPO_ID = textwrap.dedent(
    """
    import importlib.abc, json, sys, torch
    remote = sys.argv[2] == "remote"
    if remote:
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "modeling_pal" or name.startswith("modeling_pal."):
                    raise ImportError("modeling_pal is blocked in this process")
        sys.meta_path.insert(0, Block())
    else:
        import modeling_pal
    from transformers import AutoModel, AutoModelForMultimodalLM, AutoProcessor, pipeline
    kwargs = {"trust_remote_code": True} if remote else {}
    inputs = torch.load(sys.argv[1])
    model = AutoModelForMultimodalLM.from_pretrained("org/pal", **kwargs).eval()
    base = AutoModel.from_pretrained("org/pal", **kwargs).eval()
    processor = AutoProcessor.from_pretrained("org/pal", **kwargs)
    pipe = pipeline("audio-text-to-text", model="org/pal", **kwargs)
    chat = [{"role": "user", "content": [{"type": "audio", "audio": inputs.pop("wave").numpy()},
                                         {"type": "text", "text": "what do you hear?"}]}]
    answer = pipe(text=chat, max_new_tokens=4, return_full_text=False)
    with torch.no_grad():
        logits = model(**inputs).logits[:, -1]
        hidden = base(**inputs).last_hidden_state[:, -1]
    print(json.dumps({"logits": logits.tolist(), "hidden": hidden.tolist(), "processor": type(processor).__name__,
                      "answer": answer[0]["generated_text"], "blocked": remote and "modeling_pal" not in sys.modules}))
    """
)


@pytest.fixture(scope="module")
def published(pal_model, tiny_llm_dir, tiny_whisper_dir, tmp_path_factory):
    model = pal_model("llama", "lal")
    processor = PalProcessor.from_components(tiny_llm_dir("llama"), {"whisper": tiny_whisper_dir}, model.config)
    folder = write_repository(model, processor, tmp_path_factory.mktemp("dry-run"), REPO_ID, BASE_MODELS)
    return model, processor, folder


def test_dry_run_has_only_safetensors_and_a_valid_card(published):
    _, _, folder = published
    names = {path.name for path in folder.rglob("*")}
    assert "model.safetensors" in names or "model.safetensors.index.json" in names
    assert not [name for name in names if name.endswith(PICKLE_SUFFIXES)]
    assert {"config.json", "modeling_pal.py", "configuration_pal.py", "processing_pal.py", "pipeline_pal.py"} <= names
    assert "auto_map" in json.loads((folder / "config.json").read_text())
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "audio-text-to-text"
    assert set(card.data.base_model) == set(BASE_MODELS.values())


def place_in_hub_cache(folder, cache):
    """The layout `snapshot_download` leaves: blobs are plain files here, snapshots/<commit>/..., refs/main."""
    repo = cache / "models--org--pal"
    shutil.copytree(folder, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)


@pytest.mark.parametrize("mode", ["package", "remote"])
def test_load_by_repo_id_from_the_hub_cache(mode, published, tmp_path):
    model, processor, folder = published
    place_in_hub_cache(folder, tmp_path / "hub")
    wave = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    chat = [{"role": "user", "content": [{"type": "audio", "audio": wave}, {"type": "text", "text": "hello"}]}]
    inputs = dict(processor.apply_chat_template([chat], tokenize=True, return_dict=True, return_tensors="pt"))
    torch.save({**inputs, "wave": torch.from_numpy(wave)}, tmp_path / "inputs.pt")
    env = {
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "HF_HOME": str(tmp_path / "home"),
        "PATH": "/usr/bin:/bin",
    }
    result = subprocess.run(
        [sys.executable, "-c", LOAD_BY_REPO_ID, str(tmp_path / "inputs.pt"), mode],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    with torch.no_grad():
        expected = model(**inputs)
        hidden = model.model(**inputs).last_hidden_state[:, -1]
    assert torch.equal(torch.tensor(report["logits"]), expected.logits[:, -1])
    assert torch.equal(torch.tensor(report["hidden"]), hidden)
    assert report["processor"] == "PalProcessor"
    assert isinstance(report["answer"], str)
    assert report["blocked"] == (mode == "remote")


def test_card_links_only_the_paper(published):
    _, _, folder = published
    links = re.findall(r"\]\((\S+?)\)", (folder / "README.md").read_text())
    assert links == ["https://arxiv.org/abs/2506.10423"]


def test_card_names_components_by_hub_id_and_never_by_local_path(published, tiny_llm_dir, tiny_whisper_dir):
    model, _, _ = published
    local = base_models(model.config)  # the tiny components' temporary folders
    assert local == {"llm": tiny_llm_dir("llama"), "whisper": tiny_whisper_dir}
    card = build_model_card(model.config, REPO_ID, local, recipe=None, evaluation=None)
    assert tiny_llm_dir("llama") not in card.text and tiny_whisper_dir not in card.text
    assert "- LLM: local checkpoint (" in card.text and "| whisper | local checkpoint |" in card.text
    assert card.data.base_model is None
    card = build_model_card(model.config, REPO_ID, {**local, "whisper": BASE_MODELS["whisper"]}, None, None)
    assert "| whisper | `openai/whisper-large-v3` |" in card.text and card.data.base_model == [BASE_MODELS["whisper"]]


def test_card_license_is_the_one_given(published, push_script, tmp_path):
    """The card claimed apache-2.0 whatever the base models' terms (a Llama 3.2 derivative is llama3.2)."""
    model, _, _ = published
    card = build_model_card(model.config, REPO_ID, BASE_MODELS, None, None, license="llama3.2")
    assert card.data.license == "llama3.2" and "license: llama3.2" in str(card)
    assert (
        push_script.parse_args(["--model", str(tmp_path), "--repo-id", REPO_ID, "--license", "llama3.2"]).license
        == "llama3.2"
    )


def test_evaluation_table_shows_metrics_with_their_chance_level():
    """An `examples/evaluate_pal.py` report: `count`, `chance` and `unparsed` are not metrics."""
    report = {
        "split": "test",
        "metrics": {"temporal_order": {"count": 60, "accuracy": 0.2, "chance": 0.5, "unparsed": 39}},
    }
    rows = [line.split("|")[1:-1] for line in evaluation_table(report).splitlines() if line.startswith("| temporal")]
    assert [[cell.strip() for cell in row] for row in rows] == [["temporal_order", "60", "accuracy", "0.200", "0.500"]]


def test_unknown_base_model_component_is_rejected(published):
    model, _, _ = published
    with pytest.raises(ValueError, match=r"'whsiper'.*\['llm', 'whisper'\]"):
        base_models(model.config, {"whsiper": "openai/whisper-large-v3"})


def test_clap_encoder_composed_from_a_local_path_has_its_base_model(
    tiny_llm_dir, tiny_whisper_dir, tiny_encoder_dir, tmp_path
):
    """CLAP's audio tower comes out of a full `ClapModel`: its nested config must still remember the checkpoint."""
    paths = {"llm": tiny_llm_dir("llama"), "whisper": tiny_whisper_dir, "clap": tiny_encoder_dir("clap")}
    encoders = {"whisper": paths["whisper"], "clap": paths["clap"]}
    model = PalForConditionalGeneration.from_components(paths["llm"], encoders, integration="pal", lal_start_layer=2)
    model.config.save_pretrained(tmp_path)
    assert base_models(model.config) == base_models(AutoConfig.from_pretrained(tmp_path)) == paths


@pytest.fixture(scope="module")
def push_script():
    spec = importlib.util.spec_from_file_location("push_to_hub", PUSH_SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_malformed_base_model_entry_or_missing_model_folder_is_a_usage_error(push_script, capsys, tmp_path):
    with pytest.raises(SystemExit):
        push_script.parse_args(["--model", str(tmp_path), "--repo-id", REPO_ID, "--base-model", "llm"])
    assert "expected COMPONENT=HUB_ID" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # not a Hub repo id error: the folder is named
        push_script.parse_args(["--model", str(tmp_path / "stage9"), "--repo-id", REPO_ID])
    assert f"no such folder: {tmp_path / 'stage9'}" in capsys.readouterr().err


def test_dry_run_writes_only_into_a_new_or_empty_folder(published, push_script, capsys, tmp_path):
    """A stale file (an old shard, a previous run's `pal_eval.json`) would sit beside what would be uploaded."""
    model, processor, _ = published
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"stale")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        write_repository(model, processor, tmp_path, REPO_ID)
    with pytest.raises(SystemExit):  # refused before the model loads
        push_script.parse_args(["--model", str(tmp_path), "--repo-id", REPO_ID, "--dry-run", str(tmp_path)])
    assert f"{tmp_path} exists and is not an empty folder" in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model-00001-of-00002.safetensors"]


@pytest.mark.parametrize("repo_id", ["my org/pal", "https://huggingface.co/org/pal", "org/pal/"])
def test_invalid_repo_id_is_a_usage_error(repo_id, push_script, capsys, tmp_path):
    """It failed only at the upload, after the model had loaded and its repository had been written."""
    with pytest.raises(SystemExit):
        push_script.parse_args(["--model", str(tmp_path), "--repo-id", repo_id, "--dry-run", str(tmp_path / "out")])
    assert "argument --repo-id: Repo id must" in capsys.readouterr().err


def test_base_model_must_be_a_hub_id(push_script, capsys, tmp_path):
    """A local path given as a base model was dropped from the card's metadata without a word."""
    with pytest.raises(SystemExit):
        push_script.parse_args(["--model", str(tmp_path), "--repo-id", REPO_ID, "--base-model", f"llm={tmp_path}/llm"])
    assert "argument --base-model: Repo id must" in capsys.readouterr().err


def test_push_checks_the_hub_before_loading_the_model(push_script, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "not-loaded").mkdir()  # holds no model: loading it first would fail otherwise
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE=1"):
        push_script.main(["--model", str(tmp_path / "not-loaded"), "--repo-id", REPO_ID])


def test_upload_deletes_the_weights_and_reports_of_an_earlier_upload(monkeypatch, tmp_path):
    """Re-publishing sharded weights over single-file ones left the old `model.safetensors`, which loads first."""
    remote = [".gitattributes", "README.md", "model.safetensors", "pal_eval.json", "assets/sample.wav"]
    remote += ["onnx/model.safetensors", "onnx/pal_eval.json"]  # the user's: subfolders are not the upload's
    commits = []
    api = HfApi(token="hf_test")
    monkeypatch.setattr(hf_api, "is_xet_available", lambda: False)  # the single-commit path, no network
    monkeypatch.setattr(api, "_validate_yaml", lambda *args, **kwargs: None)
    monkeypatch.setattr(api, "create_repo", lambda *args, **kwargs: None)
    monkeypatch.setattr(api, "list_repo_files", lambda *args, **kwargs: remote)
    commit = SimpleNamespace(commit_url=f"https://huggingface.co/{REPO_ID}/commit/0")
    monkeypatch.setattr(api, "create_commit", lambda **kwargs: commits.append(kwargs["operations"]) or commit)
    for name in ("README.md", "model-00001-of-00002.safetensors", "model.safetensors.index.json"):
        (tmp_path / name).write_text("{}")
    assert upload_repository(api, tmp_path, REPO_ID) == commit.commit_url
    deleted = sorted(op.path_in_repo for op in commits[0] if type(op).__name__ == "CommitOperationDelete")
    assert deleted == ["model.safetensors", "pal_eval.json"]


@pytest.mark.parametrize("upload_fails", [False, True])
def test_push_removes_its_temporary_folder(upload_fails, push_script, saved_pal_checkpoint, tmp_path, monkeypatch):
    uploaded = []

    def upload(api, folder, repo_id, private=False):
        uploaded.append({path.name for path in Path(folder).iterdir()})
        if upload_fails:
            raise RuntimeError("upload interrupted")
        return "https://huggingface.co/org/pal/commit/0"

    monkeypatch.setattr(push_script, "hub_api", lambda token: "checked client")
    monkeypatch.setattr(push_script, "upload_repository", upload)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(RuntimeError) if upload_fails else contextlib.nullcontext():
        push_script.main(["--model", saved_pal_checkpoint("lal"), "--repo-id", REPO_ID])
    assert {"model.safetensors", "README.md"} <= uploaded[0]
    assert not list(tmp_path.iterdir())
