"""
Trains the small components PAL is built from, on PAL-Synth, as ordinary Transformers checkpoints:

* `OUT/llm`: a Llama-3.2-shaped `LlamaForCausalLM` with a byte-level BPE tokenizer (Llama-3 special tokens,
  reserved tokens and chat template), trained as a causal LM on the dataset's chats, captions and transcripts;
* `OUT/whisper`: a small `WhisperForConditionalGeneration` (5 s windows, 80 mels) trained for ASR on the espeak-ng
  speech, with its `WhisperFeatureExtractor` and the same tokenizer;
* `OUT/clap`: a small `ClapModel` (HTSAT audio tower, RoBERTa-like text tower) trained contrastively on
  (clip, caption) pairs, with its `ClapFeatureExtractor` (48 kHz, zero padding) and the same tokenizer.

Each component trains for a time budget and reports a held-out metric against its untrained model and a unigram
baseline. `OUT/manifest.json` records the arguments, a data fingerprint and the metrics; a rerun with the same
data and arguments returns them without training.

    python -m modeling_pal.data.pretrain_components --data DATA_DIR --out OUT_DIR [--budget-seconds 240] [--seed 0]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time
from pathlib import Path

import torch
import transformers
from datasets import DatasetDict, load_from_disk
from tqdm.auto import tqdm
from transformers import set_seed

from ._pretrain_clap import train_clap
from ._pretrain_common import fast_bfloat16
from ._pretrain_llm import train_llm, train_tokenizer
from ._pretrain_whisper import train_whisper

DEFAULT_BUDGET_SECONDS = 240.0
MANIFEST_VERSION = 4
# Shares of the training budget: the LLM converges fastest; Whisper (ASR from scratch) and CLAP each need ~600 steps
# before digit WER < 0.3 and retrieval > 0.5 hold on every seed tried (0, 1, 2)
BUDGET_SHARES = {"llm": 0.15, "whisper": 0.57, "clap": 0.28}
COMPONENTS = {"llm": train_llm, "whisper": train_whisper, "clap": train_clap}

__all__ = ["pretrain_components", "train_clap", "train_llm", "train_tokenizer", "train_whisper", "data_fingerprint"]


def data_fingerprint(dataset: DatasetDict) -> str:
    """A digest of the splits' `datasets` fingerprints (content and history) and sizes."""
    parts = [f"{name}:{dataset[name]._fingerprint}:{dataset[name].num_rows}" for name in sorted(dataset)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _cached_metrics(out_dir: Path, request: dict) -> dict | None:
    """The manifest's metrics when it was written for `request` and every checkpoint is present."""
    manifest = out_dir / "manifest.json"
    if not manifest.is_file() or not all((out_dir / name / "config.json").is_file() for name in COMPONENTS):
        return None
    recorded = json.loads(manifest.read_text())
    return recorded["metrics"] if recorded.get("request") == request else None


def pretrain_components(
    data: str | Path | DatasetDict,
    out_dir: str | Path,
    budget_seconds: float = DEFAULT_BUDGET_SECONDS,
    seed: int = 0,
    max_steps: int | None = None,
) -> dict:
    """
    Trains (or reuses) the LLM, Whisper and CLAP checkpoints in `out_dir/{llm,whisper,clap}`.

    Args:
        data: a PAL-Synth `DatasetDict` or the directory it was saved to (needs `train` and `validation`).
        out_dir: where the checkpoints and `manifest.json` go.
        budget_seconds: wall-clock training budget of all components together, split by `BUDGET_SHARES` (data
            preparation and evaluation come on top).
        seed: seeds initialisation, data order and sampling.
        max_steps: optional step limit per component; with it (and a budget that is not reached) runs are exactly
            reproducible.

    Returns:
        `{"llm": {...}, "whisper": {...}, "clap": {...}}`, each with the held-out metric of the trained model, of the
        untrained model and of a unigram baseline.
    """
    dataset = data if isinstance(data, DatasetDict) else load_from_disk(str(data))
    out_dir = Path(out_dir)
    request = {
        "version": MANIFEST_VERSION,
        "budget_seconds": budget_seconds,
        "seed": seed,
        "max_steps": max_steps,
        "data_fingerprint": data_fingerprint(dataset),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "bfloat16": fast_bfloat16(),
    }
    cached = _cached_metrics(out_dir, request)
    if cached is not None:
        tqdm.write(f"Components in {out_dir} are up to date (manifest.json matches); nothing to train.")
        return cached
    start = time.perf_counter()
    (out_dir / "manifest.json").unlink(missing_ok=True)
    set_seed(seed)
    tokenizer = train_tokenizer(dataset["train"])
    metrics = {}
    for name, train_component in COMPONENTS.items():
        shutil.rmtree(out_dir / name, ignore_errors=True)
        metrics[name] = train_component(
            dataset["train"],
            dataset["validation"],
            tokenizer,
            out_dir / name,
            budget_seconds=budget_seconds * BUDGET_SHARES[name],
            seed=seed,
            max_steps=max_steps,
        )
    manifest = {"request": request, "metrics": metrics, "wall_seconds": round(time.perf_counter() - start, 1)}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return metrics


def main(argv: list[str] | None = None) -> dict:
    """Command-line entry point; prints the metrics as JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="PAL-Synth directory (from `python -m modeling_pal.data.synth`)")
    parser.add_argument("--out", required=True, help="output directory for llm/, whisper/, clap/ and manifest.json")
    parser.add_argument(
        "--budget-seconds", type=float, default=DEFAULT_BUDGET_SECONDS, help="training seconds, all components"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=None, help="optional step limit per component")
    args = parser.parse_args(argv)
    metrics = pretrain_components(args.data, args.out, args.budget_seconds, args.seed, args.max_steps)
    print(json.dumps(metrics, indent=2))
    return metrics


if __name__ == "__main__":
    main()
