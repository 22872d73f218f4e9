"""
FSDP2 (`fully_shard`, one shard unit per `_no_split_modules` layer, as examples/accelerate/fsdp.yaml) on two CPU
ranks over gloo: the sharded PAL computes the unsharded model's loss and gradients. `accelerate` runs FSDP on GPUs
only, so this drives torch's FSDP2 directly, the API behind accelerate's `fsdp_version: 2`.
"""

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import build_inputs, clip, loss_and_gradients, prompt, text_labels
from transformers import WhisperFeatureExtractor

from modeling_pal.training import set_trainable

SCRIPT = Path(__file__).parent / "scripts" / "fsdp_step.py"
TRAINED = ["connectors", "llm"]


# hybrid: Q-Former summaries via PLITS and every token via LAL, tied embeddings; Qwen3: the LAL keys' k_norm, untied
@pytest.mark.parametrize(("family", "integration"), [("llama", "hybrid"), ("qwen3", "lal")])
def test_fsdp2_on_two_cpu_ranks_matches_the_unsharded_model(
    family, integration, pal_model, tiny_whisper_dir, tmp_path
):
    model = copy.deepcopy(pal_model(family, integration))
    extractor = WhisperFeatureExtractor.from_pretrained(tiny_whisper_dir)
    samples = [[prompt(3), clip(1.0, 0), prompt(4)], [prompt(2), clip(1.5, 1), prompt(6, start=40)]]
    batch = build_inputs(model, extractor, samples)
    batch["labels"] = text_labels(model.config, batch)
    model.save_pretrained(tmp_path / "model")
    torch.save(batch, tmp_path / "batch.pt")

    set_trainable(model, TRAINED)
    output, expected = loss_and_gradients(model, batch)
    command = [
        sys.executable,
        str(SCRIPT),
        str(tmp_path / "model"),
        str(tmp_path / "batch.pt"),
        str(tmp_path / "out.pt"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-5000:]
    sharded = torch.load(tmp_path / "out.pt")

    assert any("language_model.layers" in unit for unit in sharded["units"])
    assert any("audio_towers" in unit for unit in sharded["units"])
    torch.testing.assert_close(sharded["loss"], output.loss.detach(), rtol=1e-5, atol=1e-6)
    assert sharded["grads"].keys() == expected.keys()
    assert any("lal_projectors" in name for name in expected)
    for name, grad in expected.items():
        torch.testing.assert_close(sharded["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)
