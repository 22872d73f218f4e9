"""
Model inputs built by hand for the model tests (the processor has its own tests), and checks shared by test modules.

A clip is cut into each encoder's windows by the processor's windowing (`processing_pal.encoder_windows`); the
layout (placeholders, markers, batch-major windows) is built here by hand. tests/test_processor.py pins the
windowing's frame counts and padding.
"""

import copy
import json
import subprocess
import sys
import textwrap

import numpy as np
import torch
from transformers import AutoConfig, AutoModel, AutoModelForMultimodalLM

from modeling_pal.configuration_pal import num_encoder_tokens, num_plits_tokens
from modeling_pal.processing_pal import encoder_windows as processor_windows

SAMPLING_RATE = 16000
WAVEFORM_WINDOW = 8000  # 0.5 s windows for waveform encoders (the processor's `waveform_window_seconds`)


def clip(seconds: float, seed: int) -> np.ndarray:
    """White noise at 16 kHz."""
    return np.random.default_rng(seed).standard_normal(int(SAMPLING_RATE * seconds)).astype(np.float32) * 0.1


def encoder_windows(audio_config, extractor, samples: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """A clip's windows for one encoder, cut by the processor: features `(W, *feature_shape)`, mask `(W, frames)`."""
    features, mask = processor_windows(audio_config.model_type, extractor, samples, WAVEFORM_WINDOW / SAMPLING_RATE)
    return torch.from_numpy(features), torch.from_numpy(mask)


def build_inputs(model, extractors, samples: list[list]) -> dict:
    """
    `samples`: per sample a list of segments, each a list of token ids (text) or a 1-D array (a clip at 16 kHz).
    `extractors`: the feature extractor of each encoder slot (or the one extractor of a single-slot model).
    Returns left-padded model inputs: per clip, the PLITS placeholders of each PLITS slot in slot order, then one
    marker token when an encoder uses LAL; `audio_*_{k}` for every slot.
    """
    config = model.config
    extractors = extractors if isinstance(extractors, (list, tuple)) else [extractors]
    rows, slots = [], [{"features": [], "masks": [], "clips": []} for _ in extractors]
    for segments in samples:
        ids, windows = [], [([], [], []) for _ in extractors]
        for segment in segments:
            if not isinstance(segment, np.ndarray):
                ids.extend(segment)
                continue
            for k, extractor in enumerate(extractors):
                features, mask = encoder_windows(config.audio_configs[k], extractor, segment)
                ids.extend([config.audio_placeholder_token_id] * count_plits(config, k, mask))
                clip_index = len(set(windows[k][2]))
                windows[k][0].append(features)
                windows[k][1].append(mask)
                windows[k][2].extend([clip_index] * len(features))
            if config.uses_lal:
                ids.append(config.audio_token_id)
        rows.append(ids)
        for slot, (features, masks, clips) in zip(slots, windows):
            slot["features"].append(torch.cat(features) if features else None)
            slot["masks"].append(torch.cat(masks) if masks else None)
            slot["clips"].append(torch.tensor(clips, dtype=torch.long))
    inputs = pad_text(rows)
    for k, slot in enumerate(slots):
        inputs.update(pad_windows(k, **slot))
    return inputs


def count_plits(config, slot: int, mask: torch.Tensor) -> int:
    """PLITS placeholders of a clip's windows in one slot (0 for a LAL-only encoder)."""
    settings = config.audio_encoders[slot]
    if settings["integration"] not in ("plits", "hybrid"):
        return 0
    tokens = num_encoder_tokens(config.audio_configs[slot], mask.sum(-1), mask.shape[-1])
    return sum(int(num_plits_tokens(settings, int(t), config.num_summary_tokens)) for t in tokens)


def pad_text(rows: list[list[int]]) -> dict:
    length = max(len(row) for row in rows)
    input_ids = torch.tensor([[0] * (length - len(row)) + row for row in rows])
    attention_mask = torch.tensor([[0] * (length - len(row)) + [1] * len(row) for row in rows])
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def pad_windows(slot: int, features: list, masks: list, clips: list) -> dict:
    """Batch-major windows of one slot; samples without audio get padding windows only (none if no sample has audio)."""
    template = next((f for f in features if f is not None), None)
    if template is None:
        return {}
    most = max(len(c) for c in clips)

    def pad(tensor, like, value):
        tensor = like[:0] if tensor is None else tensor
        return torch.cat([tensor, torch.full((most - len(tensor), *like.shape[1:]), value, dtype=like.dtype)])

    mask_template = next(m for m in masks if m is not None)
    return {
        f"audio_features_{slot}": torch.stack([pad(f, template, 0.0) for f in features]),
        f"audio_feature_mask_{slot}": torch.stack([pad(m, mask_template, 0) for m in masks]),
        f"audio_window_clip_{slot}": torch.stack([pad(c, c, -1) for c in clips]),
    }


def prompt(n: int, start: int = 20) -> list[int]:
    return list(range(start, start + n))


@torch.no_grad()
def last_logits(model, inputs) -> torch.Tensor:
    return model(**inputs).logits[:, -1]


def text_labels(config, inputs: dict) -> torch.Tensor:
    """Labels on every text position: the input ids, -100 at audio markers, PLITS placeholders and padding."""
    ids = inputs["input_ids"]
    audio = (ids == config.audio_placeholder_token_id) | (ids == config.audio_token_id)
    return ids.masked_fill(audio | (inputs["attention_mask"] == 0), -100)


def loss_and_gradients(model, inputs: dict) -> tuple:
    """One forward with `inputs` (labels included) and its backward: (the output, {parameter name: gradient})."""
    model.zero_grad(set_to_none=True)
    output = model(**inputs)
    output.loss.backward()
    return output, {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


def sharpened(model):
    """
    A copy whose LLM and projector weights (not the encoders') are re-drawn with std 0.15, seeded. With the default
    init (std 0.02) the tiny LLMs' logits are near flat and greedy decoding mostly repeats one token (the Llama one
    echoes the prompt's last token whatever the audio), so equality between two generation paths would hold whatever
    their attention, padding or cache does.
    """
    model = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() >= 2 and not name.startswith("model.audio_towers."):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.15)
    return model


def assert_varied(tokens: torch.Tensor, new_tokens: int = 8, distinct: int = 3) -> None:
    """
    The last `new_tokens` of each row of `tokens` hold at least `distinct` different tokens, and no two rows are equal:
    an equality between such outputs and another path's cannot hold by accident.
    """
    rows = [tuple(row.tolist()) for row in tokens[:, -new_tokens:]]
    assert all(len(set(row)) >= distinct for row in rows), rows
    assert len(set(rows)) == len(rows), rows


def greedy(model, inputs, **kwargs) -> torch.Tensor:
    return model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False, **kwargs)


def config_dict(config) -> dict:
    return {
        key: value for key, value in config.to_dict().items() if key not in ("_name_or_path", "transformers_version")
    }


def check_generation(model, extractors, samples: list[list]) -> None:
    """
    Greedy with cache == without cache == `num_beams=1` == static cache; beams per sample equal the sample alone.
    Pass a `sharpened` model: the outputs compared must be varied.
    """
    batch = build_inputs(model, extractors, samples)
    cached = greedy(model, batch)
    assert_varied(cached)
    assert torch.equal(cached, greedy(model, batch, use_cache=False))
    assert torch.equal(cached, greedy(model, batch, num_beams=1))
    assert torch.equal(cached, greedy(model, batch, cache_implementation="static"))

    beams = greedy(model, batch, num_beams=3, num_return_sequences=2)
    assert beams.shape[0] == 2 * len(samples)
    assert_varied(beams, distinct=2)  # beam search favours repetitions
    for index, sample in enumerate(samples):
        alone = greedy(model, build_inputs(model, extractors, [sample]), num_beams=3, num_return_sequences=2)
        assert torch.equal(beams[2 * index : 2 * index + 2, -8:], alone[:, -8:])


def check_batch_invariance(model, extractors, batch_samples: list[list], target: int) -> None:
    """
    Sample `target` generates the same alone and in `batch_samples` (varied outputs: pass a `sharpened` model); a
    training step there gives finite grads.
    """
    alone = greedy(model, build_inputs(model, extractors, [batch_samples[target]]))
    in_batch = greedy(model, build_inputs(model, extractors, batch_samples))
    assert_varied(in_batch)
    assert torch.equal(alone[0, -8:], in_batch[target, -8:])

    model.train()
    try:
        inputs = build_inputs(model, extractors, batch_samples)
        outputs = model(**inputs, labels=inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100))
        outputs.loss.backward()
        assert torch.isfinite(outputs.logits).all()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def check_save_load(model, inputs: dict, tmp_path) -> None:
    """Save → `AutoModelForMultimodalLM` / `AutoModel` / `AutoConfig` reload: no missing weights, identical outputs."""
    model.save_pretrained(tmp_path)
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
        assert torch.equal(base(**inputs).last_hidden_state, model.model(**inputs).last_hidden_state)


REMOTE_CODE_CHECK = textwrap.dedent(
    """
    import importlib.abc, json, sys, torch
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "modeling_pal" or name.startswith("modeling_pal."):
                raise ImportError("modeling_pal is blocked in this process")
    sys.meta_path.insert(0, Block())
    from transformers import AutoConfig, AutoModel, AutoModelForMultimodalLM
    reports = []
    for path, inputs_path in zip(sys.argv[1::2], sys.argv[2::2]):
        inputs = torch.load(inputs_path)
        model = AutoModelForMultimodalLM.from_pretrained(path, trust_remote_code=True).eval()
        assert "modeling_pal" not in sys.modules
        base = AutoModel.from_pretrained(path, trust_remote_code=True)
        config = AutoConfig.from_pretrained(path, trust_remote_code=True)
        with torch.no_grad():
            logits = model(**inputs).logits[:, -1]
        reports.append({"logits": logits.tolist(), "base": type(base).__name__, "config": type(config).__name__})
    print(json.dumps(reports))
    """
)


def check_remote_code(models_and_inputs: list[tuple], tmp_path) -> None:
    """
    Saves each model and loads it with `trust_remote_code=True` in one subprocess where `modeling_pal` cannot be
    imported; its last-position logits must equal the in-process model's exactly.
    """
    arguments = []
    for index, (model, inputs) in enumerate(models_and_inputs):
        model.save_pretrained(tmp_path / f"ckpt{index}")
        torch.save(inputs, tmp_path / f"inputs{index}.pt")
        arguments += [str(tmp_path / f"ckpt{index}"), str(tmp_path / f"inputs{index}.pt")]
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_CODE_CHECK, *arguments],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    reports = json.loads(result.stdout.strip().splitlines()[-1])
    for (model, inputs), report in zip(models_and_inputs, reports):
        assert report["base"] == "PalModel" and report["config"] == "PalConfig"
        torch.testing.assert_close(torch.tensor(report["logits"]), last_logits(model, inputs), rtol=0, atol=0)
