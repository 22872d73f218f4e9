"""
Generation edge cases: static cache, `lal_audio_rope` in a batch, precomputed audio with beams, `inputs_embeds`, and
the modes PAL refuses. The models are sharpened: with the default init every greedy output is one repeated token, so
equality between two generation modes would hold whatever their attention does.
"""

import copy

import pytest
import torch
from helpers import assert_varied, build_inputs, clip, greedy, last_logits, prompt, sharpened
from transformers import LogitsProcessorList, StaticCache, WhisperFeatureExtractor

import modeling_pal.modeling_pal

SAMPLES = [[prompt(3), clip(1.0, 4), prompt(4, 40)], [prompt(5, 30), clip(2.0, 5), prompt(2, 50)]]


@pytest.fixture(scope="module")
def extractor(tiny_whisper_dir):
    return WhisperFeatureExtractor.from_pretrained(tiny_whisper_dir)


def audio_inputs(inputs: dict) -> dict:
    """Moves the `audio_*` entries out of `inputs` and returns them."""
    return {name: inputs.pop(name) for name in list(inputs) if name.startswith("audio_")}


@pytest.mark.parametrize(("family", "integration"), [("llama", "lal"), ("qwen3", "lal"), ("llama", "hybrid")])
def test_static_cache_equals_dynamic_cache_and_no_cache(family, integration, pal_model, extractor):
    """
    Without padding, SDPA gets no mask at a static-cache prefill (its top-left `is_causal` stands for it) while the
    keys are the whole preallocated cache: a LAL query must still see the text up to its own position only.
    """
    model = sharpened(pal_model(family, integration))
    inputs = build_inputs(model, extractor, SAMPLES[:1])
    dynamic = greedy(model, inputs)
    assert len(set(dynamic[0, -8:].tolist())) > 2
    assert torch.equal(greedy(model, inputs, cache_implementation="static"), dynamic)
    assert torch.equal(greedy(model, inputs, use_cache=False), dynamic)

    ids = inputs.pop("input_ids")
    del inputs["attention_mask"]  # by hand, without any mask: the prefill, then decoding steps
    cache = StaticCache(config=model.config.text_config, max_cache_len=ids.shape[1] + 4)
    with torch.no_grad():
        logits = model(input_ids=ids, cache=cache, **inputs).logits
        torch.testing.assert_close(logits, model(input_ids=ids, **inputs).logits, rtol=0, atol=1e-5)
        for _ in range(3):
            ids = torch.cat([ids, logits[:, -1:].argmax(-1)], dim=1)
            logits = model(input_ids=ids[:, -1:], cache=cache).logits
            torch.testing.assert_close(logits[:, -1], last_logits(model, {"input_ids": ids, **inputs}))
        model.set_attn_implementation("eager")
        cache = StaticCache(config=model.config.text_config, max_cache_len=ids.shape[1] + 4)
        eager = model(input_ids=ids, cache=cache, **inputs)
    torch.testing.assert_close(eager.logits, model(input_ids=ids, **inputs).logits, rtol=0, atol=1e-5)


def test_static_cache_prefill_never_takes_the_split_attention(pal_model, extractor, monkeypatch):
    """The split kernels take the keys as exactly the causal text; a static cache's keys include its empty slots."""
    model = sharpened(pal_model("llama", "lal"))
    monkeypatch.setattr(modeling_pal.modeling_pal, "SPLIT_ATTENTION_MIN_TEXT", 2)
    calls = []
    split = modeling_pal.modeling_pal.PalSplitAttention.apply
    monkeypatch.setattr(
        modeling_pal.modeling_pal.PalSplitAttention, "apply", lambda *args: calls.append(args) or split(*args)
    )
    inputs = build_inputs(model, extractor, SAMPLES[:1])
    del inputs["attention_mask"]
    cache = StaticCache(config=model.config.text_config, max_cache_len=inputs["input_ids"].shape[1] + 4)
    with torch.no_grad():
        static = model(**inputs, cache=cache).logits
        assert not calls
        torch.testing.assert_close(static, model(**inputs).logits, rtol=0, atol=1e-5)
    assert len(calls) == len(model.config.lal_layers)  # without a cache the same prefill splits


def test_lal_audio_rope_keeps_a_sample_independent_of_its_batch(pal_model, extractor):
    """Each sample's audio keys sit at its own positions -Na … -1, however long the batch's longest audio is."""
    model = sharpened(pal_model("llama", "lal", lal_audio_rope=True))
    short = [prompt(3), clip(1.0, 8), prompt(3, 40)]
    longer = [prompt(3, 30), clip(3.5, 9), prompt(3, 50)]  # same text length: no padding, only more audio columns
    alone, batch = build_inputs(model, extractor, [short]), build_inputs(model, extractor, [longer, short])
    torch.testing.assert_close(last_logits(model, batch)[1], last_logits(model, alone)[0], rtol=0, atol=1e-5)
    in_batch = greedy(model, batch)
    assert_varied(in_batch)
    assert torch.equal(in_batch[1], greedy(model, alone)[0])


@pytest.mark.parametrize("integration", ["lal", "plits"])
def test_generate_with_audio_embeds_expands_them_for_beams_and_samples(integration, pal_model, extractor):
    model = sharpened(pal_model("llama", integration))
    inputs = build_inputs(model, extractor, SAMPLES)
    audio = audio_inputs(inputs)
    with torch.no_grad():
        embeds = model.get_audio_features(*audio.values())
    beams = {"num_beams": 2, "num_return_sequences": 2}
    expected = greedy(model, {**inputs, **audio}, **beams)
    assert_varied(expected, distinct=2)  # beam search favours repetitions
    assert torch.equal(greedy(model, {**inputs, "audio_embeds": [embeds]}, **beams), expected)
    sampling = {"do_sample": True, "num_return_sequences": 3, "max_new_tokens": 4}
    torch.manual_seed(0)
    expected = model.generate(**inputs, **audio, **sampling)
    torch.manual_seed(0)
    assert torch.equal(model.generate(**inputs, audio_embeds={"whisper": embeds}, **sampling), expected)


@pytest.mark.parametrize("integration", ["lal", "hybrid"])
def test_generate_from_inputs_embeds_equals_input_ids(integration, pal_model, extractor):
    """Markers and placeholders are found by their embeddings; `generate` then returns the new tokens only."""
    model = sharpened(pal_model("llama", integration))
    text_only = {"input_ids": torch.tensor([prompt(6)]), "attention_mask": torch.ones(1, 6, dtype=torch.long)}
    for inputs in (text_only, build_inputs(model, extractor, SAMPLES)):
        input_ids = inputs.pop("input_ids")
        with torch.no_grad():
            embeds = model.get_input_embeddings()(input_ids)
        expected = greedy(model, {"input_ids": input_ids, **inputs})[:, input_ids.shape[1] :]
        assert_varied(expected)
        assert torch.equal(greedy(model, {"inputs_embeds": embeds, **inputs}), expected)


def test_chunked_prefill_and_audio_with_a_filled_cache_are_refused(pal_model, extractor):
    model = sharpened(pal_model("llama", "hybrid"))  # PLITS placeholders and LAL markers
    inputs = build_inputs(model, extractor, SAMPLES[:1])
    with pytest.raises(ValueError, match="Chunked prefill cannot split the audio inputs"):
        greedy(model, inputs, prefill_chunk_size=4)

    first = model.generate(**inputs, max_new_tokens=2, do_sample=False, return_dict_in_generate=True)
    input_ids = torch.cat([first.sequences, torch.tensor([prompt(3, 60)])], dim=1)
    follow_up = {**inputs, "input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    with pytest.raises(ValueError, match="PAL takes audio at prefill only"):
        greedy(model, follow_up, cache=copy.deepcopy(first.cache))
    text = {"input_ids": input_ids, "attention_mask": follow_up["attention_mask"]}
    expected = greedy(model, follow_up)
    assert_varied(expected)
    assert torch.equal(greedy(model, text, cache=copy.deepcopy(first.cache)), expected)


def test_deprecated_past_key_values_keyword_is_the_cache(pal_model, extractor):
    """Transformers 5.24 still takes `past_key_values=` (now `cache`) with a warning: a decoding step must use it."""
    model = sharpened(pal_model("llama", "lal"))
    inputs = build_inputs(model, extractor, SAMPLES[:1])
    with torch.no_grad():
        prefill = model(**inputs, use_cache=True)
        ids = torch.cat([inputs["input_ids"], prefill.logits[:, -1:].argmax(-1)], dim=1)
        with pytest.warns(FutureWarning, match="past_key_values"):
            step = model(input_ids=ids[:, -1:], past_key_values=prefill.cache, attention_mask=torch.ones_like(ids))
        expected = last_logits(model, {**inputs, "input_ids": ids, "attention_mask": torch.ones_like(ids)})
    torch.testing.assert_close(step.logits[:, -1], expected)


@pytest.mark.parametrize("integration", ["lal", "hybrid"])
def test_assisted_decoding_with_a_pal_assistant_equals_greedy(integration, pal_model, extractor):
    """`generate` marks every assistant call as a later iteration: its empty-cache prefill must still get the audio."""
    model = sharpened(pal_model("llama", integration))
    inputs = build_inputs(model, extractor, SAMPLES[:1])
    expected = greedy(model, inputs)
    assert_varied(expected)
    assert torch.equal(greedy(model, inputs, assistant_model=model), expected)
    assert torch.equal(greedy(model, inputs, prompt_lookup_num_tokens=3), expected)


def test_batch_operations_on_a_copied_cache_act_on_the_copy(pal_model, extractor):
    """A deep copy of a used cache keeps the audio store operations to itself (they stayed bound to the original)."""
    model = sharpened(pal_model("llama", "lal"))
    inputs = build_inputs(model, extractor, SAMPLES)
    first = model.generate(**inputs, max_new_tokens=2, do_sample=False, return_dict_in_generate=True)
    copied = copy.deepcopy(first.cache)
    copied.batch_select_indices(torch.tensor([1]))  # continue the second conversation only
    assert first.cache.layers[0].keys.shape[0] == first.cache.pal_audio_store.valid.shape[0] == 2
    input_ids = torch.cat([first.sequences[1:], torch.tensor([prompt(3, 60)])], dim=1)
    text = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    expected = greedy(model, {**text, **{name: value[1:] for name, value in audio_inputs(inputs).items()}})
    assert_varied(expected)
    assert torch.equal(greedy(model, text, cache=copied), expected)


def test_decoding_steps_do_not_search_for_audio_markers(pal_model, extractor, monkeypatch):
    """LAL audio enters at prefill: a cached decoding step scans its token for placeholders only, not for markers."""
    model = pal_model("llama", "lal")
    inputs = build_inputs(model, extractor, SAMPLES[:1])
    searched = []
    token_mask = modeling_pal.modeling_pal.PalModel._token_mask
    monkeypatch.setattr(
        modeling_pal.modeling_pal.PalModel,
        "_token_mask",
        lambda self, ids, embeds, token_id: searched.append(token_id) or token_mask(self, ids, embeds, token_id),
    )
    with torch.no_grad():
        model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert searched.count(model.config.audio_token_id) == 1


@pytest.mark.parametrize("visibility", ["causal", "all"])
def test_generating_a_marker_without_a_cache_goes_on(visibility, pal_model, extractor):
    """Without a cache each step reruns prompt and answer: a marker token in the answer must not count as a clip's."""
    model = pal_model("llama", "lal", lal_audio_visibility=visibility)
    inputs = build_inputs(model, extractor, SAMPLES[:1])
    marker = model.config.audio_token_id
    forced = LogitsProcessorList([lambda ids, scores: scores.index_fill(1, torch.tensor([marker]), 1e4)])
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=3, do_sample=False, use_cache=False, logits_processor=forced)
    assert output[0, -3:].tolist() == [marker] * 3
