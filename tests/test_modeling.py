"""Core-model invariants, for every supported LLM family and for PLITS and LAL (design.md §1 "Consequences")."""

import copy

import pytest
import torch
from conftest import FAMILIES
from helpers import (
    assert_varied,
    build_inputs,
    check_batch_invariance,
    check_generation,
    check_remote_code,
    check_save_load,
    clip,
    greedy,
    last_logits,
    loss_and_gradients,
    prompt,
    sharpened,
    text_labels,
)
from transformers import AutoModelForCausalLM, WhisperFeatureExtractor

import modeling_pal.modeling_pal
from modeling_pal import PalAudioFeatures, PalForConditionalGeneration
from modeling_pal.modeling_pal import PalJointKV

INTEGRATIONS = ("plits", "lal")
CASES = [(family, integration) for family in FAMILIES for integration in INTEGRATIONS]


@pytest.fixture(scope="module")
def extractor(tiny_whisper_dir):
    return WhisperFeatureExtractor.from_pretrained(tiny_whisper_dir)


@pytest.mark.parametrize("family", FAMILIES)
def test_without_audio_lal_equals_base_llm(family, pal_model, tiny_llm_dir):
    model = pal_model(family, "lal")
    base = AutoModelForCausalLM.from_pretrained(tiny_llm_dir(family)).eval()
    input_ids = torch.tensor([prompt(12)])
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
        inputs = build_inputs(model, extractor, [[prompt(4), clip(1.5, seed), prompt(5, 40)]])
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
    inputs = build_inputs(model, extractor, [[prompt(3), clip(1.0, 3), prompt(3, 40)]])
    captured = {}
    layer_idx = model.config.lal_layers[0]
    attention = model.model.language_model.layers[layer_idx].self_attn
    original = attention.audio_key_values

    def capture(lal_inputs):
        keys, values = original(lal_inputs)
        captured["keys"], captured["norm"] = keys, lal_inputs.audio_norms[layer_idx]
        captured["states"] = lal_inputs.audio_norms[layer_idx](lal_inputs.audio_states[layer_idx])
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
    assert captured["norm"] is norm  # normalised by the layer's own input norm, inside the layer's forward
    torch.testing.assert_close(states, expected_states)
    torch.testing.assert_close(captured["keys"], expected.transpose(1, 2))


@pytest.mark.parametrize("family,integration", CASES)
def test_generation_cache_beams_and_static(family, integration, pal_model, extractor):
    model = sharpened(pal_model(family, integration))
    samples = [
        [prompt(3), clip(1.0, 4), prompt(4, 40)],
        [prompt(6, 30), clip(3.0, 5), prompt(2, 50)],
    ]
    check_generation(model, extractor, samples)


def test_lal_decoding_buffer_appends_in_place_and_follows_the_cache():
    """The `[audio ; text]` buffer equals concatenation after appends, growth, a crop and a beam reorder."""
    torch.manual_seed(0)
    audio = [torch.randn(2, 4, 2, 3).transpose(1, 2), torch.randn(2, 2, 4, 3)]  # keys (a transposed view), values
    joint = PalJointKV(*audio)
    text = [torch.randn(2, 2, 5, 3), torch.randn(2, 2, 5, 3)]

    def step(num_new: int) -> None:
        text[:] = [torch.cat([tensor, torch.randn(2, 2, num_new, 3)], 2) for tensor in text]
        for got, audio_part, text_part in zip(joint.appended(*text, num_new), audio, text):
            assert torch.equal(got, torch.cat([audio_part, text_part], 2))

    step(2)
    storage = joint.keys.data_ptr()
    for index in range(80):  # past the spare capacity: the buffer grows once, otherwise stays in place
        step(1)
        if index == 10:
            assert joint.keys.data_ptr() == storage
    text[:] = [tensor[:, :, :40] for tensor in text]  # a crop (assisted decoding): the text is rewritten
    step(2)
    order = torch.tensor([1, 0])  # a beam reorder, applied to the cache and to the buffer
    joint.map(lambda tensor: tensor.index_select(0, order))
    audio[:], text[:] = [tensor[order] for tensor in audio], [tensor[order] for tensor in text]
    step(1)


def test_long_lal_generation_with_dynamic_cache_equals_no_cache(pal_model, extractor):
    """Past the decoding buffer's first growth: cached greedy == recomputed greedy; beams batched == alone."""
    model = sharpened(pal_model("llama", "lal"))
    samples = [[prompt(3), clip(1.0, 14), prompt(4, 40)], [prompt(6, 30), clip(2.0, 15), prompt(2, 50)]]
    batch = build_inputs(model, extractor, samples)
    settings = {"max_new_tokens": 72, "min_new_tokens": 72, "do_sample": False}
    cached = model.generate(**batch, **settings, return_dict_in_generate=True)
    store = cached.cache.pal_audio_store
    text_length = cached.cache.get_seq_length()
    assert text_length > batch["input_ids"].shape[1] + 64  # the buffer outgrew its first spare capacity
    assert set(store.layers) == set(model.config.lal_layers)
    assert all(joint.length == joint.num_audio + text_length for joint in store.layers.values())
    assert_varied(cached.sequences, new_tokens=72, distinct=8)
    assert torch.equal(cached.sequences, model.generate(**batch, **settings, use_cache=False))
    beams = model.generate(**batch, **settings, num_beams=2)
    alone = model.generate(**build_inputs(model, extractor, samples[1:]), **settings, num_beams=2)
    assert torch.equal(beams[1, -72:], alone[0, -72:])


@pytest.mark.parametrize("integration", INTEGRATIONS)
def test_encoder_runs_once_and_nothing_survives_between_calls(integration, pal_model, extractor, tmp_path):
    model = sharpened(pal_model("llama", integration))
    calls = []
    hook = model.model.audio_towers[0].register_forward_hook(lambda *_: calls.append(1))
    first = build_inputs(model, extractor, [[prompt(3), clip(1.0, 6), prompt(3, 40)]])
    # same prompt, a longer clip: the tiny random Whisper's output follows its positions far more than the noise
    second = build_inputs(model, extractor, [[prompt(3), clip(2.0, 7), prompt(3, 40)]])
    outputs = [greedy(model, first), greedy(model, second)]
    hook.remove()
    assert len(calls) == 2
    assert_varied(torch.cat([output[:, -8:] for output in outputs]))  # the first clip, left over, would show
    model.save_pretrained(tmp_path)
    for inputs, output in zip((first, second), outputs):
        fresh = type(model).from_pretrained(tmp_path).eval()
        assert torch.equal(greedy(fresh, inputs), output)


@pytest.mark.parametrize("family,integration", CASES)
def test_batch_invariance_and_no_nan(family, integration, pal_model, extractor):
    model = sharpened(pal_model(family, integration))
    batch_samples = [
        [prompt(9, 30), clip(3.5, 9), prompt(4, 50)],  # longer prompt, longer audio
        [prompt(3), clip(1.0, 8), prompt(3, 40)],
        [prompt(5, 60)],  # text only
    ]
    check_batch_invariance(model, extractor, batch_samples, target=1)


@pytest.mark.parametrize("family,integration", CASES)
def test_eager_equals_sdpa_on_left_padded_batch(family, integration, pal_model, extractor):
    model = pal_model(family, integration)
    inputs = build_inputs(
        model,
        extractor,
        [[prompt(2), clip(1.0, 10), prompt(2, 40)], [prompt(8, 30), clip(2.5, 11)]],
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


def forced_split_attention(monkeypatch) -> list:
    """Makes every LAL layer take the split attention whatever the text length; returns the list its calls go to."""
    monkeypatch.setattr(modeling_pal.modeling_pal, "SPLIT_ATTENTION_MIN_TEXT", 2)
    calls = []
    split = modeling_pal.modeling_pal.PalSplitAttention.apply
    monkeypatch.setattr(
        modeling_pal.modeling_pal.PalSplitAttention, "apply", lambda *args: calls.append(args) or split(*args)
    )
    return calls


# Llama: grouped K/V heads; Qwen3: the audio keys' k_norm; hybrid: Q-Former summaries in the text
@pytest.mark.parametrize(("family", "integration"), [("llama", "lal"), ("qwen3", "lal"), ("llama", "hybrid")])
def test_split_audio_attention_equals_the_joint_one(family, integration, pal_model, extractor, monkeypatch):
    """On CPU, long texts take two flash kernels merged by log-sum-exp: same logits, gradients and generations."""
    model = copy.deepcopy(pal_model(family, integration)).train()
    # a text-only sample (no visible audio column) beside one whose first positions precede the clip's marker
    with_audio = [prompt(3), clip(1.0, 5), prompt(4)]
    length = build_inputs(model, extractor, [with_audio])["input_ids"].shape[1]
    inputs = build_inputs(model, extractor, [[prompt(length, 40)], with_audio])
    assert inputs["attention_mask"].all()  # no padding: the text attention is purely causal
    inputs["labels"] = text_labels(model.config, inputs)
    calls = forced_split_attention(monkeypatch)
    split_output, split_grads = loss_and_gradients(model, inputs)
    assert len(calls) == len(model.config.lal_layers)
    model.set_attn_implementation("eager")
    joint_output, joint_grads = loss_and_gradients(model, inputs)
    torch.testing.assert_close(split_output.logits, joint_output.logits, rtol=1e-5, atol=1e-5)
    assert split_grads.keys() == joint_grads.keys()
    for name, grad in split_grads.items():
        torch.testing.assert_close(grad, joint_grads[name], rtol=1e-4, atol=1e-5, msg=name)
    model.eval()
    inputs.pop("labels")
    joint_tokens = greedy(model, inputs)
    model.set_attn_implementation("sdpa")
    assert torch.equal(greedy(model, inputs), joint_tokens)  # the prefill takes the split kernels too


@pytest.mark.parametrize("family,integration", CASES)
def test_save_load_roundtrip(family, integration, pal_model, extractor, tmp_path):
    model = pal_model(family, integration)
    check_save_load(model, build_inputs(model, extractor, [[prompt(3), clip(1.0, 12), prompt(3, 40)]]), tmp_path)


def test_trust_remote_code_without_package(pal_model, extractor, tmp_path):
    """Every family and integration, loaded in one subprocess that cannot import `modeling_pal`."""
    cases = []
    for family, integration in CASES:
        model = pal_model(family, integration)
        cases.append((model, build_inputs(model, extractor, [[prompt(3), clip(1.0, 13), prompt(3, 40)]])))
    check_remote_code(cases, tmp_path)


def test_split_audio_attention_in_bfloat16(pal_model, extractor, monkeypatch):
    """
    bf16, the paper's training dtype: the split kernels' log-sum-exp merge stays as close to the float32 model as the
    joint bf16 kernel does, and their gradients agree within bf16 rounding.
    """
    reference = copy.deepcopy(pal_model("llama", "lal")).train()
    inputs = build_inputs(reference, extractor, [[prompt(3), clip(1.0, 5), prompt(4)]])
    inputs["labels"] = text_labels(reference.config, inputs)
    expected, _ = loss_and_gradients(reference, inputs)
    model = reference.to(torch.bfloat16)
    joint, joint_grads = loss_and_gradients(model, inputs)
    calls = forced_split_attention(monkeypatch)
    split, split_grads = loss_and_gradients(model, inputs)
    assert len(calls) == len(model.config.lal_layers) and split.logits.dtype == torch.bfloat16
    joint_error = (joint.logits.float() - expected.logits).abs().max()
    assert (split.logits.float() - expected.logits).abs().max() <= 2 * joint_error
    assert split_grads.keys() == joint_grads.keys()
    for name, grad in split_grads.items():  # within bf16 rounding of each gradient's scale
        scale = joint_grads[name].float().abs().max().item()
        torch.testing.assert_close(grad.float(), joint_grads[name].float(), rtol=0.02, atol=0.02 * scale, msg=name)


def test_encoder_layer_out_of_range_is_refused_at_build(pal_model):
    config = copy.deepcopy(pal_model("llama", "lal").config)  # a 2-layer Whisper encoder: hidden states -3 … 2
    for layer in (3, -4):
        config.audio_encoders[0]["layer"] = layer
        with pytest.raises(ValueError, match=f"'whisper': layer {layer} is out of range"):
            modeling_pal.modeling_pal.PalModel(config)


def test_return_dict_false_gives_tuples(pal_model, extractor):
    """`return_dict=False`, as for any Transformers model: `(loss, logits, …)` and `(last_hidden_state, …)`."""
    model = pal_model("llama", "lal")
    inputs = build_inputs(model, extractor, [[prompt(3), clip(1.0, 16), prompt(3, 40)]])
    labels = text_labels(model.config, inputs)
    with torch.no_grad():
        expected = model(**inputs, labels=labels)
        loss, logits = model(**inputs, labels=labels, return_dict=False)[:2]
        hidden = model.model(**inputs, return_dict=False)[0]
    assert torch.equal(loss, expected.loss) and torch.equal(logits, expected.logits)
    assert torch.equal(hidden, model.model(**inputs).last_hidden_state)


@pytest.mark.parametrize("visibility", ["causal", "all"])
def test_lal_markers_without_their_audio_are_refused(visibility, pal_model, extractor):
    """A marker stands for a clip: audio inputs forgotten or misnamed must not give an answer without the audio."""
    model = pal_model("llama", "lal", lal_audio_visibility=visibility)
    inputs = build_inputs(model, extractor, [[prompt(3), clip(1.0, 17), prompt(3, 40)], [prompt(7, 30)]])
    text = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
    with torch.no_grad(), pytest.raises(ValueError, match="Sample 0 has 0 LAL audio clips but 1 "):
        model(**text, input_features=inputs["audio_features_0"])
    stray_marker = inputs["input_ids"].clone()
    stray_marker[1, -1] = model.config.audio_token_id
    with torch.no_grad(), pytest.raises(ValueError, match="Sample 1 has 0 LAL audio clips but 1 "):
        model(**{**inputs, "input_ids": stray_marker})


def test_malformed_audio_inputs_are_refused_by_name(pal_model, extractor):
    """Shapes that do not fit raise a `ValueError` naming the input, not an indexing error inside torch."""
    model = pal_model("llama", "lal")
    inputs = build_inputs(model, extractor, [[prompt(3), clip(1.0, 18), prompt(3, 40)]])
    features, mask = inputs["audio_features_0"], inputs["audio_feature_mask_0"]
    malformed = {
        "audio_features_0": {"audio_features_0": features[:, 0]},  # no window axis
        "audio_feature_mask_0": {"audio_feature_mask_0": mask[..., :100]},
        "audio_window_clip_0": {"audio_window_clip_0": torch.zeros(1, 2, dtype=torch.long)},
    }
    for name, change in malformed.items():
        with torch.no_grad(), pytest.raises(ValueError, match=rf"{name} .*must have shape"):
            model(**{**inputs, **change})


def test_audio_inputs_for_missing_slots_or_other_batches_are_refused(pal_model, extractor):
    """Audio for a slot the model lacks, or of another batch size than the text, raises instead of being dropped."""
    model = pal_model("llama", "lal")
    sample = [prompt(3), clip(1.0, 19), prompt(3, 40)]
    inputs = build_inputs(model, extractor, [sample])
    with torch.no_grad():
        embeds = model.get_audio_features(inputs["audio_features_0"], inputs["audio_feature_mask_0"])
        with pytest.raises(ValueError, match=r"audio_features_1 .*1 audio encoder"):
            model(**inputs, audio_features_1=inputs["audio_features_0"])
        with pytest.raises(ValueError, match="either audio_embeds or"):
            model(**inputs, audio_embeds=[embeds])
        with pytest.raises(ValueError, match="audio_embeds has 2 entries"):  # the second was dropped by zip
            model(input_ids=inputs["input_ids"], audio_embeds=[embeds, embeds])
        pair = build_inputs(model, extractor, [sample, sample])
        text = {"input_ids": pair["input_ids"], "attention_mask": pair["attention_mask"]}
        for audio in (
            {name: value for name, value in inputs.items() if name.startswith("audio_")},
            {"audio_embeds": [embeds]},
        ):
            with pytest.raises(ValueError, match="batch size 1 but the text has 2"):
                model(**text, **audio)


def test_separate_audio_projections_start_from_the_layers_own(pal_model, tmp_path):
    """
    `lal_kv_source="separate"` switched on when loading a checkpoint trained with shared projections: the new
    `audio_k_proj`/`audio_v_proj` start as the layer's `k_proj`/`v_proj`, as documented; trained ones load as saved.
    """
    pal_model("qwen2", "lal").save_pretrained(tmp_path / "shared")  # Qwen2: k/v biases too
    model = PalForConditionalGeneration.from_pretrained(tmp_path / "shared", lal_kv_source="separate")
    attentions = [model.model.language_model.layers[layer].self_attn for layer in model.config.lal_layers]
    for attention in attentions:
        for audio, own in ((attention.audio_k_proj, attention.k_proj), (attention.audio_v_proj, attention.v_proj)):
            assert torch.equal(audio.weight, own.weight) and torch.equal(audio.bias, own.bias)
    with torch.no_grad():
        attentions[0].audio_k_proj.weight.mul_(2)
    model.save_pretrained(tmp_path / "separate")
    reloaded = PalForConditionalGeneration.from_pretrained(tmp_path / "separate")
    audio_k_proj = reloaded.model.language_model.layers[model.config.lal_layers[0]].self_attn.audio_k_proj
    assert torch.equal(audio_k_proj.weight, attentions[0].audio_k_proj.weight)


@pytest.mark.parametrize("integration", ["lal", "plits", "hybrid"])
def test_text_only_rows_sliced_from_a_batch_run_alone(integration, pal_model, extractor):
    """
    A text-only row of a processor batch has padding windows only (a per-sample loop, or a batch split across
    devices): it runs like its text alone, without calling the encoder on zero windows.
    """
    model = pal_model("llama", integration)
    inputs = build_inputs(model, extractor, [[prompt(3), clip(1.0, 20), prompt(3, 40)], [prompt(7, 30)]])
    row = {name: value[1:] for name, value in inputs.items()}
    assert (row["audio_window_clip_0"] == -1).all()
    text = {"input_ids": row["input_ids"], "attention_mask": row["attention_mask"]}
    torch.testing.assert_close(last_logits(model, row), last_logits(model, text), rtol=0, atol=0)
    assert torch.equal(greedy(model, row), greedy(model, text))


def attention_reference(
    attention, hidden: torch.Tensor, position: torch.Tensor, visible: torch.Tensor, audio: torch.Tensor | None, rope
) -> torch.Tensor:
    """
    One self-attention from its weights: text `hidden (L, D)` at `position (L,)`, queries see the keys where `visible
    (L, Na + L)`; `audio (Na, D)` (already normalised) adds keys without RoPE and values in front. → `(L, D)`.
    """
    head_dim, length = attention.head_dim, len(hidden)

    def heads(projection, states, norm=None):  # (N, D) → (heads, N, head_dim)
        states = projection(states).view(len(states), -1, head_dim)
        return (norm(states) if norm is not None else states).transpose(0, 1)

    def rotate(states):
        cos, sin = rope(states, position[None])
        half = states.shape[-1] // 2
        return states * cos + torch.cat([-states[..., half:], states[..., :half]], -1) * sin

    query = rotate(heads(attention.q_proj, hidden, getattr(attention, "q_norm", None)))
    key = rotate(heads(attention.k_proj, hidden, getattr(attention, "k_norm", None)))
    value = heads(attention.v_proj, hidden)
    if audio is not None:
        key = torch.cat([heads(attention.k_proj, audio, getattr(attention, "k_norm", None)), key], 1)
        value = torch.cat([heads(attention.v_proj, audio), value], 1)
    groups = query.shape[0] // key.shape[0]
    key, value = key.repeat_interleave(groups, 0), value.repeat_interleave(groups, 0)
    scores = (query @ key.transpose(1, 2)) * head_dim**-0.5
    weights = scores.masked_fill(~visible, float("-inf")).softmax(-1)
    return attention.o_proj((weights @ value).transpose(0, 1).reshape(length, -1))


@torch.no_grad()
def reference_logits(model, ids: torch.Tensor, clips: list[list[torch.Tensor]]) -> torch.Tensor:
    """
    PAL from scratch for one unpadded sample `ids (L,)` with one encoder; `clips`: per clip, its windows' valid encoder
    tokens `(T_w, C)`. PLITS embeddings fill the placeholders in order; each LAL layer prepends the clips' audio as
    keys/values seen from the clip's marker on (sliding windows apply to text only). → logits `(L, vocab)`.
    """
    config, decoder = model.config, model.model.language_model
    settings, name = config.audio_encoders[0], config.audio_encoders[0]["name"]
    hidden = decoder.embed_tokens(ids)
    if settings["integration"] != "lal":
        projector, pieces = model.model.plits_projectors[name], []
        for window in (window for windows in clips for window in windows):
            valid = torch.ones(1, len(window), dtype=torch.bool)
            embeds, embeds_valid = projector(window[None], valid)
            pieces.append(embeds[embeds_valid])
        placeholders = ids == config.audio_placeholder_token_id
        hidden = hidden.masked_scatter(placeholders[:, None], torch.cat(pieces)) if pieces else hidden
    audio = torch.cat([torch.cat(windows) for windows in clips]) if clips else None
    audio_clip = (
        torch.cat([torch.full((sum(map(len, windows)),), k) for k, windows in enumerate(clips)]) if clips else None
    )
    position = torch.arange(len(ids))
    markers = (ids == config.audio_token_id).long().cumsum(0)
    window = getattr(config.text_config, "sliding_window", None)
    layer_types = getattr(config.text_config, "layer_types", None) or ["sliding_attention"] * len(decoder.layers)
    for index, layer in enumerate(decoder.layers):
        visible = position[None, :] <= position[:, None]
        if window is not None and layer_types[index] == "sliding_attention":
            visible &= position[:, None] - position[None, :] < window
        layer_audio = None
        if index in config.lal_layers and audio is not None:
            layer_audio = layer.input_layernorm(model.model.lal_projectors[name][str(index)](audio))
            visible = torch.cat([audio_clip[None, :] < markers[:, None], visible], 1)
        normed = layer.input_layernorm(hidden)
        hidden = hidden + attention_reference(
            layer.self_attn, normed, position, visible, layer_audio, decoder.rotary_emb
        )
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    return model.lm_head(decoder.norm(hidden))


@pytest.mark.parametrize(
    ("family", "integration"), [("llama", "lal"), ("mistral", "lal"), ("qwen3", "hybrid"), ("qwen2", "plits")]
)
def test_logits_equal_a_from_scratch_reference(family, integration, pal_model, extractor):
    """Left-padded batch, samples with two clips of different lengths, one clip, and none."""
    model = sharpened(pal_model(family, integration))
    samples = [
        [prompt(3), clip(1.0, 21), prompt(2, 40), clip(2.6, 22), prompt(4, 50)],
        [prompt(6, 30), clip(0.7, 23), prompt(2, 60)],
        [prompt(5, 60)],
    ]
    inputs = build_inputs(model, extractor, samples)
    with torch.no_grad():
        logits = model(**inputs).logits
    for row, segments in enumerate(samples):
        clips = []
        for segment in segments[1::2] if segments[1:] else []:
            one = build_inputs(model, extractor, [[segment]])
            audio = model.get_audio_features(one["audio_features_0"], one["audio_feature_mask_0"])
            clips.append([tokens[mask] for tokens, mask in zip(audio.last_hidden_state[0], audio.audio_mask[0])])
        real = inputs["attention_mask"][row].bool()
        expected = reference_logits(model, inputs["input_ids"][row][real], clips)
        torch.testing.assert_close(logits[row][real], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("integration", ["lal", "plits"])
def test_precomputed_audio_in_float32_feeds_a_bfloat16_model(integration, pal_model, extractor):
    """`audio_embeds` stored in float32 with a 0/1 mask (e.g. saved to disk) are cast like raw features are."""
    model = copy.deepcopy(pal_model("llama", integration)).to(torch.bfloat16)
    inputs = build_inputs(model, extractor, [[prompt(3), clip(1.0, 24), prompt(3, 40)]])
    names = ("audio_features_0", "audio_feature_mask_0", "audio_window_clip_0")
    with torch.no_grad():
        embeds = model.get_audio_features(*(inputs.pop(name) for name in names))
    stored = PalAudioFeatures(
        last_hidden_state=embeds.last_hidden_state.float(),
        audio_mask=embeds.audio_mask.long(),  # a 0/1 mask, as many formats store booleans
        window_clip=embeds.window_clip,
    )
    expected = last_logits(model, {**inputs, "audio_embeds": [embeds]})
    assert torch.equal(last_logits(model, {**inputs, "audio_embeds": [stored]}), expected)
