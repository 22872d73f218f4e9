"""Core-model invariants, for every supported LLM family and for PLITS and LAL (design.md §1 "Consequences")."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import FAMILIES
from helpers import build_inputs
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMultimodalLM, WhisperFeatureExtractor

INTEGRATIONS = ("plits", "lal")
CASES = [(family, integration) for family in FAMILIES for integration in INTEGRATIONS]


@pytest.fixture(scope="module")
def extractor(tiny_whisper_dir):
    return WhisperFeatureExtractor.from_pretrained(tiny_whisper_dir)


def clip(seconds: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(int(16000 * seconds)).astype(np.float32) * 0.1


def prompt(model, n: int, start: int = 20) -> list[int]:
    return list(range(start, start + n))


@torch.no_grad()
def last_logits(model, inputs) -> torch.Tensor:
    return model(**inputs).logits[:, -1]


def greedy(model, inputs, **kwargs) -> torch.Tensor:
    return model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False, **kwargs)


@pytest.mark.parametrize("family", FAMILIES)
def test_without_audio_lal_equals_base_llm(family, pal_model, tiny_llm_dir):
    model = pal_model(family, "lal")
    base = AutoModelForCausalLM.from_pretrained(tiny_llm_dir(family)).eval()
    input_ids = torch.tensor([prompt(model, 12)])
    with torch.no_grad():
        pal_logits = model(input_ids=input_ids).logits
        base_logits = base(input_ids=input_ids).logits
    vocab = base.config.vocab_size
    assert (pal_logits[..., :vocab] - base_logits).abs().max() <= 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_lal_ffn_sees_text_only_and_early_layers_ignore_audio(family, pal_model, extractor):
    model = pal_model(family, "lal")
    text_length = 10
    seen = []
    hooks = [
        layer.mlp.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[1]))
        for layer in model.model.language_model.layers
    ]
    outputs = []
    for seed in (1, 2):
        inputs = build_inputs(model, extractor, [[prompt(model, 4), clip(1.5, seed), prompt(model, 5, 40)]])
        assert inputs["input_ids"].shape[1] == text_length
        with torch.no_grad():
            outputs.append(model(**inputs, output_hidden_states=True).hidden_states)
    for hook in hooks:
        hook.remove()
    assert set(seen) == {text_length}
    start = model.config.lal_layers[0]
    for layer in range(start + 1):  # hidden_states[i] is the input of layer i
        assert torch.equal(outputs[0][layer], outputs[1][layer])
    for layer in model.config.lal_layers:
        assert not torch.allclose(outputs[0][layer + 1], outputs[1][layer + 1])


def test_qwen3_audio_keys_use_key_norm(pal_model, extractor):
    model = pal_model("qwen3", "lal")
    inputs = build_inputs(model, extractor, [[prompt(model, 3), clip(1.0, 3), prompt(model, 3, 40)]])
    captured = {}
    layer_idx = model.config.lal_layers[0]
    attention = model.model.language_model.layers[layer_idx].self_attn
    original = attention.audio_key_values

    def capture(lal_inputs):
        keys, values = original(lal_inputs)
        captured["keys"], captured["states"] = keys, lal_inputs.audio_states[layer_idx]
        return keys, values

    attention.audio_key_values = capture
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        del attention.audio_key_values
    states = captured["states"]
    projected = model.model.lal_projectors["whisper"][str(layer_idx)]
    audio = model.get_audio_features(inputs["audio_features_0"], inputs["audio_feature_mask_0"])
    tokens = audio.last_hidden_state[audio.audio_mask][None]
    norm = model.model.language_model.layers[layer_idx].input_layernorm
    with torch.no_grad():
        expected_states = norm(projected(tokens))
        expected = attention.k_norm(attention.k_proj(expected_states).view(1, tokens.shape[1], -1, attention.head_dim))
    torch.testing.assert_close(states, expected_states)
    torch.testing.assert_close(captured["keys"], expected.transpose(1, 2))


@pytest.mark.parametrize("family,integration", CASES)
def test_generation_cache_beams_and_static(family, integration, pal_model, extractor):
    model = pal_model(family, integration)
    samples = [
        [prompt(model, 3), clip(1.0, 4), prompt(model, 4, 40)],
        [prompt(model, 6, 30), clip(3.0, 5), prompt(model, 2, 50)],
    ]
    batch = build_inputs(model, extractor, samples)
    cached = greedy(model, batch)
    assert torch.equal(cached, greedy(model, batch, use_cache=False))
    assert torch.equal(cached, greedy(model, batch, num_beams=1))
    assert torch.equal(cached, greedy(model, batch, cache_implementation="static"))

    beams = greedy(model, batch, num_beams=3, num_return_sequences=2)
    assert beams.shape[0] == 2 * 2
    for index, sample in enumerate(samples):
        alone = greedy(model, build_inputs(model, extractor, [sample]), num_beams=3, num_return_sequences=2)
        generated = beams[2 * index : 2 * index + 2, -8:]
        assert torch.equal(generated, alone[:, -8:])


@pytest.mark.parametrize("integration", INTEGRATIONS)
def test_encoder_runs_once_and_nothing_survives_between_calls(integration, pal_model, extractor, tmp_path):
    model = pal_model("llama", integration)
    calls = []
    hook = model.model.audio_towers[0].register_forward_hook(lambda *_: calls.append(1))
    first = build_inputs(model, extractor, [[prompt(model, 3), clip(1.0, 6), prompt(model, 3, 40)]])
    second = build_inputs(model, extractor, [[prompt(model, 3), clip(1.0, 7), prompt(model, 3, 40)]])
    outputs = [greedy(model, first), greedy(model, second)]
    hook.remove()
    assert len(calls) == 2
    model.save_pretrained(tmp_path)
    for inputs, output in zip((first, second), outputs):
        fresh = type(model).from_pretrained(tmp_path).eval()
        assert torch.equal(greedy(fresh, inputs), output)


@pytest.mark.parametrize("family,integration", CASES)
def test_batch_invariance_and_no_nan(family, integration, pal_model, extractor):
    model = pal_model(family, integration)
    target = [prompt(model, 3), clip(1.0, 8), prompt(model, 3, 40)]
    batch_samples = [
        [prompt(model, 9, 30), clip(3.5, 9), prompt(model, 4, 50)],  # longer prompt, longer audio
        target,
        [prompt(model, 5, 60)],  # text only
    ]
    alone = greedy(model, build_inputs(model, extractor, [target]))
    in_batch = greedy(model, build_inputs(model, extractor, batch_samples))
    assert torch.equal(alone[0, -8:], in_batch[1, -8:])

    model.train()
    try:
        inputs = build_inputs(model, extractor, batch_samples)
        outputs = model(**inputs, labels=inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100))
        outputs.loss.backward()
        assert torch.isfinite(outputs.logits).all()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


@pytest.mark.parametrize("integration", INTEGRATIONS)
def test_eager_equals_sdpa_on_left_padded_batch(integration, pal_model, extractor):
    model = pal_model("qwen2", integration)
    inputs = build_inputs(
        model,
        extractor,
        [[prompt(model, 2), clip(1.0, 10), prompt(model, 2, 40)], [prompt(model, 8, 30), clip(2.5, 11)]],
    )
    mask = inputs["attention_mask"].bool()
    with torch.no_grad():
        sdpa = model(**inputs).logits
        model.set_attn_implementation("eager")
        try:
            eager = model(**inputs).logits
        finally:
            model.set_attn_implementation("sdpa")
    assert (sdpa[mask] - eager[mask]).abs().max() <= 1e-5


@pytest.mark.parametrize("family,integration", CASES)
def test_save_load_roundtrip(family, integration, pal_model, extractor, tmp_path):
    model = pal_model(family, integration)
    model.save_pretrained(tmp_path)
    inputs = build_inputs(model, extractor, [[prompt(model, 3), clip(1.0, 12), prompt(model, 3, 40)]])
    expected = last_logits(model, inputs)

    loaded, info = AutoModelForMultimodalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert torch.equal(last_logits(loaded.eval(), inputs), expected)
    assert config_dict(loaded.config) == config_dict(model.config)
    assert config_dict(AutoConfig.from_pretrained(tmp_path)) == config_dict(model.config)
    if model.config.tie_word_embeddings:
        assert loaded.lm_head.weight.data_ptr() == loaded.get_input_embeddings().weight.data_ptr()
    base = AutoModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        hidden = base(**inputs).last_hidden_state
        full = model.model(**inputs).last_hidden_state
    assert torch.equal(hidden, full)


def config_dict(config) -> dict:
    return {
        key: value for key, value in config.to_dict().items() if key not in ("_name_or_path", "transformers_version")
    }


REMOTE_CODE_CHECK = textwrap.dedent(
    """
    import importlib.abc, json, sys, torch
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "modeling_pal" or name.startswith("modeling_pal."):
                raise ImportError("modeling_pal is blocked in this process")
    sys.meta_path.insert(0, Block())
    from transformers import AutoConfig, AutoModel, AutoModelForMultimodalLM
    path, inputs_path = sys.argv[1], sys.argv[2]
    inputs = torch.load(inputs_path)
    model = AutoModelForMultimodalLM.from_pretrained(path, trust_remote_code=True).eval()
    assert "modeling_pal" not in sys.modules
    base = AutoModel.from_pretrained(path, trust_remote_code=True)
    config = AutoConfig.from_pretrained(path, trust_remote_code=True)
    with torch.no_grad():
        logits = model(**inputs).logits[:, -1]
    print(json.dumps({"logits": logits.tolist(), "base": type(base).__name__, "config": type(config).__name__}))
    """
)


@pytest.mark.parametrize("integration", INTEGRATIONS)
def test_trust_remote_code_without_package(integration, pal_model, extractor, tmp_path):
    model = pal_model("llama", integration)
    model.save_pretrained(tmp_path / "ckpt")
    inputs = build_inputs(model, extractor, [[prompt(model, 3), clip(1.0, 13), prompt(model, 3, 40)]])
    torch.save(inputs, tmp_path / "inputs.pt")
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_CODE_CHECK, str(tmp_path / "ckpt"), str(tmp_path / "inputs.pt")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HF_HOME": str(tmp_path / "hf")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["base"] == "PalModel" and report["config"] == "PalConfig"
    torch.testing.assert_close(torch.tensor(report["logits"]), last_logits(model, inputs), rtol=0, atol=0)
