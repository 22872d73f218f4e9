"""
Every python block of the docs not covered by a module's own tests runs unchanged, in order, offline: each Hub id a
page names is served from a Hub cache (`models--org--name/snapshots/<commit>`, `refs/main`) of tiny local checkpoints.
(`docs/processing.md` and `docs/training.md` run in tests/test_processor.py and tests/test_training.py.)
"""

import re
import shutil
from pathlib import Path

import huggingface_hub
import pytest
from encoder_fixtures import *  # noqa: F403

REPO = Path(__file__).parent.parent
PAGES = [
    "docs/model_doc/pal.md",
    "README.md",
    "docs/hub.md",
    "docs/data.md",
    "docs/evaluation.md",
    "docs/pretrained_components.md",
]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
PUBLISHED = "my-org/pal-demo"


def python_blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / page).read_text(encoding="utf-8"), flags=re.DOTALL)


def place(cache: Path, hub_id: str, folder: str) -> None:
    repo = cache / f"models--{hub_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, tiny_llm_dir, tiny_whisper_dir, tiny_encoder_dir, saved_pal_checkpoint):
    """Serves the docs' Hub ids from a Hub cache of tiny checkpoints; runs in an empty working directory."""
    checkpoints = {
        "meta-llama/Llama-3.2-1B-Instruct": tiny_llm_dir("llama"),
        "openai/whisper-large-v3": tiny_whisper_dir,
        "laion/clap-htsat-unfused": tiny_encoder_dir("clap"),
        "facebook/hubert-base-ls960": tiny_encoder_dir("hubert"),
        PUBLISHED: saved_pal_checkpoint("lal"),
    }
    for hub_id, folder in checkpoints.items():
        place(tmp_path / "hub", hub_id, folder)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    return checkpoints


def test_every_hub_id_in_the_examples_is_served(hub_cache):
    named = {
        hub_id
        for page in PAGES
        for block in python_blocks(page)
        for hub_id in re.findall(r'"([\w.-]+/[\w.-]+)"', block)
        if not hub_id.endswith((".wav", ".json"))
    }
    assert named <= set(hub_cache)


@pytest.mark.parametrize("page", PAGES)
def test_examples_run(page, hub_cache):
    """All blocks of a page in order, in one namespace, nothing skipped."""
    blocks = python_blocks(page)
    assert blocks, f"{page} has no python example"
    namespace = {}
    for block in blocks:
        exec(compile(block, str(REPO / page), "exec"), namespace)
