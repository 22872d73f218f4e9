"""
Every encoder family (CLAP, AST, wav2vec2 / HuBERT / data2vec-audio next to Whisper), the PAL ensemble
(Whisper → PLITS, CLAP → LAL), hybrid integration, precomputed `audio_embeds` and LAL attention probabilities.
"""

import pytest
import torch
from encoder_fixtures import *  # noqa: F403
from helpers import (
    build_inputs,
    check_batch_invariance,
    check_generation,
    check_remote_code,
    check_save_load,
    clip,
    encoder_windows,
    last_logits,
    prompt,
    sharpened,
)
from transformers import (
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForMultimodalLM,
    ClapAudioConfig,
    ClapModel,
    LlamaConfig,
    Wav2Vec2Config,
)

from modeling_pal import PalConfig, PalForConditionalGeneration
from modeling_pal.configuration_pal import num_encoder_tokens
from modeling_pal.modeling_pal import load_audio_encoder

FAMILIES = ("whisper", "clap", "ast", "wav2vec2", "hubert", "data2vec-audio")
# tokens per second of the tiny encoders (encoder_fixtures.py) and seconds per window (helpers.py)
TOKEN_RATE = {"whisper": 50, "clap": 32, "ast": 25, "wav2vec2": 100, "hubert": 100, "data2vec-audio": 100}
WINDOW_SECONDS = {"whisper": 2.0, "clap": 1.0, "ast": 0.655, "wav2vec2": 0.5, "hubert": 0.5, "data2vec-audio": 0.5}
MODES = {
    # name: (encoders in slot order, integration, LLM family, PalConfig overrides)
    "pal": (("whisper", "clap"), "pal", "llama", {}),
    "hybrid": (("clap",), "hybrid", "qwen3", {"num_summary_tokens": 8}),  # 8 Q-Former queries keep prompts short
}


@pytest.fixture(scope="module")
def extractor_of(tiny_encoder_dir):
    return lambda family: AutoFeatureExtractor.from_pretrained(tiny_encoder_dir(family))


@pytest.fixture(scope="module")
def compose(tiny_llm_dir, tiny_encoder_dir):
    """Factory: `compose(encoders, integration, llm, **kwargs)` → a cached PAL in eval mode, LAL from layer 2."""
    built = {}

    def build(encoders: tuple[str, ...], integration: str = "lal", llm: str = "llama", **kwargs):
        key = (encoders, integration, llm, repr(sorted(kwargs.items())))
        if key not in built:
            torch.manual_seed(0)
            built[key] = PalForConditionalGeneration.from_components(
                tiny_llm_dir(llm),
                {family: tiny_encoder_dir(family) for family in encoders},
                integration=integration,
                lal_start_layer=2,
                **kwargs,
            ).eval()
        return built[key]

    return build


@pytest.fixture(scope="module")
def mode(compose, extractor_of):
    """Factory: `mode(name)` → `(model, extractors by slot)` for the PAL and hybrid set-ups."""

    def build(name: str):
        encoders, integration, llm, overrides = MODES[name]
        return compose(encoders, integration, llm, **overrides), [extractor_of(family) for family in encoders]

    return build


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_tokens_follow_duration_and_ignore_padding(family, compose, extractor_of):
    model, extractor = compose((family,)), extractor_of(family)
    target = clip(1.3, 1)
    alone = build_inputs(model, extractor, [[prompt(2), target]])
    batch = build_inputs(model, extractor, [[prompt(2), clip(2.7, 2)], [prompt(2), target], [prompt(4)]])

    def valid_tokens(inputs, row):
        names = ("audio_features_0", "audio_feature_mask_0", "audio_window_clip_0")
        audio = model.get_audio_features(*(inputs[name][row : row + 1] for name in names), encoder=family)
        return audio.last_hidden_state[audio.audio_mask], audio.audio_mask

    tokens, mask = valid_tokens(alone, 0)
    windows = -(-1.3 // WINDOW_SECONDS[family])
    assert mask.shape[1] == windows
    assert abs(len(tokens) - 1.3 * TOKEN_RATE[family]) <= windows  # rounding within each window
    batch_tokens, _ = valid_tokens(batch, 1)
    torch.testing.assert_close(batch_tokens, tokens, rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", ["wav2vec2", "hubert", "data2vec-audio"])
def test_waveform_windows_run_trimmed(family, compose, extractor_of, tiny_encoder_dir):
    """The last, partial window's tokens are the encoder's output on its valid samples alone."""
    model = compose((family,))
    features, mask = encoder_windows(model.config.audio_configs[0], extractor_of(family), clip(0.8, 3))
    audio = model.get_audio_features(features[None], mask[None], encoder=family)
    valid = int(mask[-1].sum())
    reference = AutoModel.from_pretrained(tiny_encoder_dir(family)).eval()
    assert int(reference._get_feat_extract_output_lengths(valid)) == int(audio.audio_mask[0, -1].sum())
    with torch.no_grad():
        expected = reference(features[-1:, :valid]).last_hidden_state[0]
    torch.testing.assert_close(audio.last_hidden_state[0, -1, : len(expected)], expected)
    model.train()  # a frozen tower stays in eval mode: no SpecAugment, no layerdrop, no dropout
    try:
        assert not model.model.audio_towers[0].training
        retrained = model.get_audio_features(features[None], mask[None], encoder=family)
    finally:
        model.eval()
    assert torch.equal(retrained.last_hidden_state, audio.last_hidden_state)


@pytest.mark.parametrize("family", FAMILIES[1:])
def test_clips_change_logits_and_weights_come_from_checkpoint(family, compose, extractor_of, tiny_encoder_dir):
    model, extractor = compose((family,)), extractor_of(family)
    logits = [
        last_logits(model, build_inputs(model, extractor, [[prompt(2), clip(1.0, seed), prompt(3, 40)]]))
        for seed in (4, 5)
    ]
    assert not torch.allclose(*logits)
    path = tiny_encoder_dir(family)
    reference = ClapModel.from_pretrained(path).audio_model if family == "clap" else AutoModel.from_pretrained(path)
    tower = model.model.audio_towers[0]
    assert reference.state_dict().keys() == tower.state_dict().keys()
    assert all(torch.equal(value, tower.state_dict()[key]) for key, value in reference.state_dict().items())


@pytest.mark.parametrize("name", MODES)
def test_generation_cache_beams_and_static(name, mode):
    model, extractors = mode(name)
    model = sharpened(model)
    samples = [
        [prompt(3), clip(1.0, 6), prompt(4, 40)],
        [prompt(6, 30), clip(2.5, 7), prompt(2, 50)],
    ]
    check_generation(model, extractors, samples)


@pytest.mark.parametrize("name", MODES)
def test_batch_invariance_and_no_nan(name, mode):
    model, extractors = mode(name)
    model = sharpened(model)
    batch_samples = [
        [prompt(9, 30), clip(3.5, 8), prompt(4, 50)],
        [prompt(3), clip(1.0, 9), prompt(3, 40)],
        [prompt(5, 60)],  # text only
    ]
    check_batch_invariance(model, extractors, batch_samples, target=1)


@pytest.mark.parametrize("name", MODES)
def test_save_load_roundtrip(name, mode, tmp_path):
    model, extractors = mode(name)
    check_save_load(model, build_inputs(model, extractors, [[prompt(3), clip(1.2, 10), prompt(3, 40)]]), tmp_path)
    sdpa = AutoModelForMultimodalLM.from_pretrained(tmp_path, attn_implementation="sdpa")
    assert [tower.config._attn_implementation for tower in sdpa.model.audio_towers][-1] == "eager"  # CLAP


def test_trust_remote_code_without_package(mode, tmp_path):
    runs = []
    for name in MODES:
        model, extractors = mode(name)
        runs.append((model, build_inputs(model, extractors, [[prompt(3), clip(1.2, 11), prompt(3, 40)]])))
    check_remote_code(runs, tmp_path)


def test_audio_embeds_give_the_same_logits(mode):
    model, extractors = mode("pal")
    inputs = build_inputs(model, extractors, [[prompt(3), clip(2.5, 12), prompt(2, 40)], [prompt(5), clip(1.0, 13)]])
    expected = last_logits(model, inputs)
    audio = {
        settings["name"]: model.get_audio_features(
            inputs.pop(f"audio_features_{k}"),
            inputs.pop(f"audio_feature_mask_{k}"),
            inputs.pop(f"audio_window_clip_{k}"),
            encoder=settings["name"],
        )
        for k, settings in enumerate(model.config.audio_encoders)
    }
    assert torch.equal(last_logits(model, {**inputs, "audio_embeds": audio}), expected)
    assert torch.equal(last_logits(model, {**inputs, "audio_embeds": list(audio.values())}), expected)


def test_lal_attention_probabilities_cover_audio_and_text(compose, extractor_of):
    encoders = ("whisper", "clap", "ast", "hubert")  # Whisper → PLITS; three LAL encoders share one softmax
    model = compose(encoders, "pal")
    extractors = [extractor_of(family) for family in encoders]
    inputs = build_inputs(
        model, extractors, [[prompt(3), clip(1.0, 14), prompt(3, 40)], [prompt(2), clip(0.6, 15), prompt(4, 40)]]
    )
    audio = model.encode_audio(**inputs)
    counts = [audio[name].audio_mask.flatten(1).sum(1) for name in encoders[1:]]
    # each LAL encoder's columns, packed per sample, concatenated in slot order on the key axis
    valid_column = torch.cat([torch.arange(int(count.max())) < count[:, None] for count in counts], dim=1)
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            attentions = model(**inputs, output_attentions=True).attentions
    finally:
        model.set_attn_implementation("sdpa")
    length = inputs["input_ids"].shape[1]
    real = inputs["attention_mask"].bool()  # (B, Q)
    marker = (inputs["input_ids"] == model.config.audio_token_id).int().argmax(-1)
    sees_audio = torch.arange(length) >= marker[:, None]  # causal visibility: from the clip's marker on
    for layer, weights in enumerate(attentions):
        num_audio = weights.shape[-1] - length
        assert num_audio == (valid_column.shape[1] if layer in model.config.lal_layers else 0)
        row_sums = weights.sum(-1).transpose(1, 2)[real]
        torch.testing.assert_close(row_sums, torch.ones_like(row_sums))
        if num_audio:
            audio_weights = weights[..., :num_audio]  # audio columns come first
            audio_mass = audio_weights.sum(-1).transpose(1, 2)  # (B, Q, H)
            assert (audio_mass[real & sees_audio] > 0).all() and (audio_mass[real & ~sees_audio] == 0).all()
            padding = (~valid_column[:, None, None, :] & real[:, None, :, None]).expand_as(audio_weights)
            assert (audio_weights[padding] == 0).all()


def test_from_components_passes_loading_options(compose, extractor_of, tiny_llm_dir):
    model = compose(("whisper", "clap"), "pal", attn_implementation="sdpa")
    whisper, clap = model.model.audio_towers
    assert (whisper.config._attn_implementation, clap.config._attn_implementation) == ("sdpa", "eager")
    assert model.config.text_config._attn_implementation == "sdpa"
    half = compose(
        ("ast", "wav2vec2"), "lal", dtype=torch.bfloat16, audio_encoder_settings={"ast": {"dtype": torch.float32}}
    )
    assert half.model.audio_towers[0].dtype == torch.float32
    assert half.model.audio_towers[1].dtype == half.model.language_model.dtype == torch.bfloat16
    inputs = build_inputs(half, [extractor_of("ast"), extractor_of("wav2vec2")], [[prompt(2), clip(0.7, 16)]])
    assert torch.isfinite(last_logits(half, inputs)).all()
    with pytest.raises(ValueError, match="llama"):
        load_audio_encoder(tiny_llm_dir("llama"))
    with pytest.raises(ValueError, match="1 to 4"):
        PalForConditionalGeneration.from_components(tiny_llm_dir("llama"), {str(k): "x" for k in range(5)})


@pytest.mark.parametrize(
    "audio_config,settings,error",
    [
        (ClapAudioConfig(enable_fusion=True), {}, "enable_fusion=False"),
        (ClapAudioConfig(), {"layer": 2}, "layer must be -1 for CLAP"),
        (Wav2Vec2Config(add_adapter=True), {}, "add_adapter"),
    ],
)
def test_config_rejects_unsupported_encoders(audio_config, settings, error):
    with pytest.raises(ValueError, match=error):
        PalConfig(text_config=LlamaConfig(), audio_config_0=audio_config, audio_encoders=[settings])


def test_clap_token_count_needs_the_window_length():
    assert num_encoder_tokens(ClapAudioConfig(), 501, 1001) == 17  # ceil(501 × 32 / 1001)
    with pytest.raises(ValueError, match="num_window_features"):
        num_encoder_tokens(ClapAudioConfig(), 501)


@pytest.mark.parametrize(
    "options,error",
    [
        ({"audio_encoder_settings": {"whisp": {"downsample": 2}}}, r"\['whisp'\] .*not in audio_encoders"),
        (
            {"audio_encoder_settings": {"whisper": {"downsampel": 2}}},
            r"audio_encoder_settings\['whisper'\] has unknown keys \['downsampel'\]",
        ),
        ({"lal_start_layr": 1}, r"unknown keyword arguments \['lal_start_layr'\]"),  # set as a stray config attribute
        ({"torch_dtype": torch.bfloat16}, r"unknown keyword arguments \['torch_dtype'\]"),  # the model stayed float32
    ],
)
def test_from_components_refuses_options_it_would_ignore(options, error, tiny_llm_dir, tiny_whisper_dir):
    """A misspelt encoder name, setting or keyword was silently dropped (the model got the default)."""
    with pytest.raises(ValueError, match=error):
        PalForConditionalGeneration.from_components(
            tiny_llm_dir("llama"), {"whisper": tiny_whisper_dir}, integration="plits", **options
        )
