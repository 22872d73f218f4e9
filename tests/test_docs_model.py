"""
docs/model_doc/pal.md: every python block runs unchanged, in order, with each Hub id it names served from a Hub cache
(`models--org--name/snapshots/<commit>`, `refs/main`) that holds a tiny local checkpoint, offline.
"""

import re
import shutil
from pathlib import Path

import huggingface_hub
import pytest
from encoder_fixtures import *  # noqa: F403

DOCS = Path(__file__).parent.parent / "docs" / "model_doc" / "pal.md"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOCS.read_text(encoding="utf-8"), flags=re.DOTALL)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, tiny_llm_dir, tiny_whisper_dir, tiny_encoder_dir) -> dict[str, str]:
    """Serves the docs' Hub ids from a Hub cache of tiny checkpoints; runs in an empty working directory."""
    checkpoints = {
        "meta-llama/Llama-3.2-1B-Instruct": tiny_llm_dir("llama"),
        "openai/whisper-large-v3": tiny_whisper_dir,
        "laion/clap-htsat-unfused": tiny_encoder_dir("clap"),
    }
    for hub_id, folder in checkpoints.items():
        repo = tmp_path / "hub" / f"models--{hub_id.replace('/', '--')}"
        shutil.copytree(folder, repo / "snapshots" / COMMIT)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    return checkpoints


def test_every_hub_id_in_the_examples_is_served(hub_cache):
    named = {hub_id for block in python_blocks() for hub_id in re.findall(r'"([\w.-]+/[\w.-]+)"', block)}
    assert named == set(hub_cache)


def test_examples_run(hub_cache):
    """All blocks in order, in one namespace, nothing skipped."""
    namespace = {}
    for block in python_blocks():
        exec(compile(block, str(DOCS), "exec"), namespace)
