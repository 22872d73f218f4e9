"""Publishing PAL checkpoints: the repository exactly as uploaded (safetensors, remote code, processor, model card)."""

import argparse
import json
import os
from fnmatch import fnmatch
from pathlib import Path

import yaml
from huggingface_hub import HfApi, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .evaluation.runner import markdown_table

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
RECIPE_FILE = "pal_recipe.yaml"
EVAL_FILE = "pal_eval.json"
TEXT_MODEL_KEY = "llm"
DEFAULT_LICENSE = "apache-2.0"  # modeling_pal's own; a checkpoint built on a base model takes that model's
# Top-level files of an earlier upload that a new one may not rewrite: other weight shards, a recipe or report since
# removed.
STALE_PATTERNS = ["*.safetensors", "*.safetensors.index.json", RECIPE_FILE, EVAL_FILE]

CARD_TEMPLATE = """
# {repo_name}

A [PAL](https://arxiv.org/abs/2506.10423) audio-LLM built with `modeling_pal` on Transformers: frozen audio
encoders feed a decoder LLM through PLITS (placeholder tokens) and/or LAL (extra keys/values of self-attention in
selected layers).

## Configuration

| encoder | base model | integration | projector | downsample |
|---|---|---|---|---|
{encoder_rows}

- LLM: {text_model} ({num_layers} layers); LAL layers: {lal_layers}
- LAL audio visibility: `{visibility}`; audio K/V source: `{kv_source}`; audio RoPE: `{audio_rope}`

## Usage

```python
from transformers import AutoModelForMultimodalLM, AutoProcessor, pipeline

model = AutoModelForMultimodalLM.from_pretrained("{repo_id}", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("{repo_id}", trust_remote_code=True)
pipe = pipeline("audio-text-to-text", model="{repo_id}", trust_remote_code=True)
pipe(text=[{{"role": "user", "content": [{{"type": "audio", "path": "clip.wav"}},
                                         {{"type": "text", "text": "What do you hear?"}}]}}],
     max_new_tokens=32, return_full_text=False)
```

With `pip install modeling_pal`, `import modeling_pal` registers the classes and `trust_remote_code` is not needed.
`trust_remote_code=True` runs the `configuration_pal.py`, `modeling_pal.py`, `processing_pal.py` and
`pipeline_pal.py` files of this repository.
{recipe_section}{eval_section}"""


def component_names(config) -> list[str]:
    """The names a base model can be given for: `"llm"` and the encoder names."""
    return [TEXT_MODEL_KEY, *(settings["name"] for settings in config.audio_encoders)]


def check_components(config, overrides: dict[str, str]) -> None:
    """Raises a `ValueError` naming the valid components when `overrides` names another one (e.g. a typo)."""
    unknown = sorted(set(overrides) - set(component_names(config)))
    if unknown:
        raise ValueError(f"Unknown component(s) {unknown} for a base model; this model has {component_names(config)}")


def base_models(config, overrides: dict[str, str] | None = None) -> dict[str, str]:
    """
    The checkpoint each component was composed from, `{"llm": ..., encoder name: ...}`: the sub-configs remember
    the path or Hub id given to `from_components`; `overrides` replace them (e.g. when they were local paths).
    """
    check_components(config, overrides or {})
    found = {TEXT_MODEL_KEY: getattr(config.text_config, "_name_or_path", "")}
    for settings, audio_config in zip(config.audio_encoders, config.audio_configs):
        found[settings["name"]] = getattr(audio_config, "_name_or_path", "")
    found.update(overrides or {})
    return found


def _is_hub_id(name: str) -> bool:
    return bool(name) and not os.path.isabs(name) and name.count("/") == 1 and not Path(name).exists()


def checkpoint_argument(text: str) -> str:
    """
    argparse type of a checkpoint option: an existing folder or a Hub id (`namespace/name`). A missing folder that
    cannot be a Hub id is refused by name (Transformers would call it an invalid repo id).
    """
    if Path(text).is_dir() or _is_hub_id(text):
        return text
    raise argparse.ArgumentTypeError(f"no such checkpoint folder: {text}")


def repo_id_argument(text: str) -> str:
    """argparse type of a Hub repository id (`name` or `namespace/name`), refused with the Hub's own rules."""
    try:
        validate_repo_id(text)
    except HFValidationError as error:
        raise argparse.ArgumentTypeError(str(error)) from error
    return text


def positive_int(text: str) -> int:
    """argparse type of a count or size: an integer ≥ 1 (0 must not silently mean "all" or crash later)."""
    if text.strip().lstrip("+").isdigit() and int(text) >= 1:
        return int(text)
    raise argparse.ArgumentTypeError(f"expected an integer ≥ 1, got {text!r}")


def folder_argument(text: str) -> str:
    """argparse type of an option that takes an existing local folder."""
    if Path(text).is_dir():
        return text
    raise argparse.ArgumentTypeError(f"no such folder: {text}")


def check_empty_folder(path: str | Path) -> None:
    """Raises a `FileExistsError` unless `path` is missing or empty: then what is written there is all it holds."""
    path = Path(path)
    if path.exists() and not (path.is_dir() and not any(path.iterdir())):
        raise FileExistsError(f"{path} exists and is not an empty folder: the repository is written into a new one")


def empty_folder_argument(text: str) -> str:
    """argparse type of an option that takes a missing or empty folder to write into."""
    try:
        check_empty_folder(text)
    except FileExistsError as error:
        raise argparse.ArgumentTypeError(str(error)) from error
    return text


def _component_cell(name: str) -> str:
    """A component as the card names it: its Hub id, never a local path (meaningless, and private, on the Hub)."""
    return f"`{name}`" if _is_hub_id(name) else "local checkpoint"


def build_model_card(
    config,
    repo_id: str,
    models: dict[str, str],
    recipe: dict | None,
    evaluation: dict | None,
    license: str = DEFAULT_LICENSE,
):
    """
    A `ModelCard` whose metadata names every Hub base model and `license` (a Hub license id: a model built on a base
    model keeps that model's terms, e.g. `"llama3.2"`), with a config summary, recipe and results.
    """
    hub_ids = sorted({name for name in models.values() if _is_hub_id(name)})
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="audio-text-to-text",
        base_model=hub_ids or None,
        tags=["pal", "audio-text-to-text", "audio-llm", "modeling_pal"],
        license=license,
    )
    encoder_rows = "\n".join(
        f"| {s['name']} | {_component_cell(models.get(s['name'], ''))} | {s['integration']} | {s['projector']} "
        f"| {s['downsample']} |"
        for s in config.audio_encoders
    )
    content = CARD_TEMPLATE.format(
        repo_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        encoder_rows=encoder_rows,
        text_model=_component_cell(models.get(TEXT_MODEL_KEY, "")),
        num_layers=config.text_config.num_hidden_layers,
        lal_layers=config.lal_layers or "none",
        visibility=config.lal_audio_visibility,
        kv_source=config.lal_kv_source,
        audio_rope=config.lal_audio_rope,
        recipe_section=f"\n## Training recipe\n\n```yaml\n{yaml.safe_dump(recipe, sort_keys=False)}```\n"
        if recipe
        else "",
        eval_section=f"\n## Evaluation\n\n{evaluation_table(evaluation)}\n" if evaluation else "",
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{content}")


def evaluation_table(evaluation: dict) -> str:
    """
    Markdown tables, one per split, from an `examples/evaluate_pal.py` report (or a dict of such reports by split),
    as the evaluation script prints them: metrics with their count and chance level.
    """
    reports = {evaluation.get("split", "test"): evaluation} if "metrics" in evaluation else evaluation
    return "\n\n".join(markdown_table(report["metrics"], title=split) for split, report in reports.items())


def write_repository(
    model,
    processor,
    out_dir: str | Path,
    repo_id: str,
    base_model_overrides=None,
    source_dir=None,
    license: str = DEFAULT_LICENSE,
):
    """
    Writes the repository exactly as it would be uploaded: safetensors weights (sharded when large), config with
    `auto_map`, the remote-code files, processor and tokenizer files, generation config and `README.md`.
    The training recipe (`pal_recipe.yaml`) and evaluation report (`pal_eval.json`) of `source_dir` are included
    when present; `license` goes into the card's metadata. `out_dir` must be missing or empty, so that it holds nothing
    else. Raises if anything pickled ended up in the folder.
    """
    check_empty_folder(out_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, max_shard_size="2GB")
    processor.save_pretrained(out_dir)
    source = Path(source_dir) if source_dir else None
    recipe = _read(source, RECIPE_FILE, yaml.safe_load)
    evaluation = _read(source, EVAL_FILE, json.loads)
    for name, content in ((RECIPE_FILE, recipe), (EVAL_FILE, evaluation)):
        if content is not None:
            (out_dir / name).write_text((source / name).read_text())
    models = base_models(model.config, base_model_overrides)
    build_model_card(model.config, repo_id, models, recipe, evaluation, license).save(out_dir / "README.md")
    pickles = [p.name for p in out_dir.rglob("*") if p.suffix in PICKLE_SUFFIXES]
    if pickles:
        raise RuntimeError(f"Refusing to publish pickled files: {pickles}")
    return out_dir


def _read(directory: Path | None, name: str, parse):
    if directory is None or not (directory / name).is_file():
        return None
    return parse((directory / name).read_text())


def hub_api(token: str | None = None) -> HfApi:
    """A Hub client checked to reach the Hub with a valid token; raises a clear error naming what is missing."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise RuntimeError("HF_HUB_OFFLINE=1 is set: unset it to upload, or use --dry-run DIR to write the folder")
    api = HfApi(token=token)
    try:
        api.whoami()
    except Exception as error:
        raise RuntimeError(
            "Cannot reach the Hugging Face Hub with a valid token: log in with `hf auth login`, set HF_TOKEN, or "
            f"pass --token; check the network ({type(error).__name__}: {error})"
        ) from error
    return api


def upload_repository(api: HfApi, folder: str | Path, repo_id: str, private: bool = False) -> str:
    """
    Creates the Hub repository (if needed) and uploads `folder` with a client from `hub_api`. Weights, recipe and
    evaluation report of an earlier upload that `folder` does not have are deleted in the same commit (stale shards
    next to new weights would load instead of them); other files added to the repository, and anything in its
    subfolders (e.g. an ONNX export), are kept.
    """
    api.create_repo(repo_id, private=private, exist_ok=True)
    return api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        commit_message="Upload PAL checkpoint",
        delete_patterns=_stale_files(api, folder, repo_id) or None,
    ).commit_url


def _stale_files(api: HfApi, folder: str | Path, repo_id: str) -> list[str]:
    """
    The repository's top-level files matching `STALE_PATTERNS` that `folder` lacks (as patterns, the Hub's `*` would
    also match in subfolders).
    """
    return [
        name
        for name in api.list_repo_files(repo_id)
        if "/" not in name
        and any(fnmatch(name, pattern) for pattern in STALE_PATTERNS)
        and not (Path(folder) / name).exists()
    ]
