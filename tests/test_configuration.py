"""PalConfig: resolution of LAL layers, validation errors naming the field, and serialisation round-trips."""

import pytest
from huggingface_hub.errors import StrictDataclassClassValidationError
from transformers import AutoConfig, LlamaConfig, WhisperConfig

from modeling_pal import PalConfig


def make(**kwargs) -> PalConfig:
    kwargs.setdefault("text_config", LlamaConfig(num_hidden_layers=8, hidden_size=64, intermediate_size=128))
    kwargs.setdefault("audio_config_0", WhisperConfig(d_model=32))
    kwargs.setdefault("audio_encoders", [{"name": "whisper", "integration": "lal"}])
    return PalConfig(**kwargs)


def test_defaults_and_resolved_layers():
    assert make().lal_layers == [2, 3, 4, 5, 6, 7]  # 8 layers → start at 8 // 4
    deep = make(text_config=LlamaConfig(num_hidden_layers=16, hidden_size=64, intermediate_size=128))
    assert deep.lal_layers == list(range(4, 16))
    assert make(lal_start_layer=5).lal_layers == [5, 6, 7]
    assert make(lal_layers=[6, 3, 3]).lal_layers == [3, 6]
    plits = make(audio_encoders=[{"name": "whisper", "integration": "plits"}])
    assert plits.lal_layers == [] and plits.audio_encoders[0]["downsample"] == 4
    assert plits.audio_encoders[0]["projector"] == "mlp"
    assert PalConfig().lal_layers == [] and PalConfig().audio_encoders == []


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"lal_start_layer": 9}, "lal_start_layer"),
        ({"lal_layers": [8]}, "lal_layers"),
        ({"lal_layers": [3, 4], "lal_start_layer": 2}, "lal_layers"),
        ({"lal_audio_visibility": "sometimes"}, "lal_audio_visibility"),
        ({"lal_kv_source": "new"}, "lal_kv_source"),
        ({"lal_projector": "mlp"}, "lal_projector"),
        ({"num_summary_tokens": 0}, "num_summary_tokens"),
        ({"audio_encoders": [{"name": "whisper", "integration": "cross"}]}, "integration"),
        ({"audio_encoders": [{"name": "whisper", "integration": "lal", "projector": "conv"}]}, "projector"),
        ({"audio_encoders": [{"name": "whisper", "integration": "plits", "downsample": 0}]}, "downsample"),
        ({"audio_encoders": [{"name": "whisper", "integration": "plits", "downsample": True}]}, "downsample"),
        ({"audio_token_id": 5, "audio_placeholder_token_id": 5}, "audio_placeholder_token_id"),
        ({"audio_encoders": [{"name": "whisper", "integration": "lal", "colour": 1}]}, "colour"),
        ({"audio_encoders": []}, "audio_encoders"),
        ({"audio_config_1": WhisperConfig(d_model=32)}, "audio_encoders"),
        ({"audio_encoders": [{"name": "whisper", "integration": "plits"}], "lal_start_layer": 2}, "lal_start_layer"),
        # names key the projectors' module dicts: torch refused these only when the model was built
        ({"audio_encoders": [{"name": "whisper.v3", "integration": "lal"}]}, r"audio_encoders\[0\].name"),
        ({"audio_encoders": [{"name": "", "integration": "lal"}]}, r"audio_encoders\[0\].name"),
    ],
)
def test_invalid_values_raise_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        make(**kwargs)


def test_gap_in_slots_raises():
    with pytest.raises(ValueError, match="audio_config"):
        make(audio_config_0=None, audio_config_1=WhisperConfig(d_model=32))


def test_round_trips(tmp_path):
    config = make(lal_start_layer=3, lal_audio_visibility="all", audio_token_id=7, audio_placeholder_token_id=8)
    assert PalConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()
    config.save_pretrained(tmp_path)
    reloaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(reloaded, PalConfig)
    without_path = lambda c: {k: v for k, v in c.to_dict().items() if k != "_name_or_path"}  # noqa: E731
    assert without_path(reloaded) == without_path(config)
    assert reloaded.get_text_config(decoder=True).num_hidden_layers == 8


def test_loading_with_a_new_lal_start_layer_resolves_the_layers_again(tmp_path):
    make(lal_start_layer=2).save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path, lal_start_layer=5).lal_layers == [5, 6, 7]
    assert AutoConfig.from_pretrained(tmp_path, lal_layers=[7, 6]).lal_layers == [6, 7]
    with pytest.raises(ValueError, match="inconsistent"):
        AutoConfig.from_pretrained(tmp_path, lal_start_layer=4, lal_layers=[6, 7])


def test_save_refuses_a_layout_changed_after_construction(tmp_path):
    config = make(lal_start_layer=2)
    config.lal_start_layer = 5  # lal_layers still says [2 … 7]
    with pytest.raises(StrictDataclassClassValidationError, match="lal_layers"):
        config.save_pretrained(tmp_path)
    config.lal_layers = [5, 6, 7]
    config.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).lal_layers == [5, 6, 7]


@pytest.mark.parametrize(
    "override,error",
    [
        ({"lal_kv_source": "seperate"}, "lal_kv_source"),  # a typo was silently taken as "shared"
        ({"num_summary_tokens": 0}, "num_summary_tokens"),
        ({"audio_encoders": [{"name": "whisper", "integration": "cross"}]}, "integration"),
    ],
)
def test_loading_validates_overrides_like_the_constructor(override, error, tmp_path):
    make().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=error):
        AutoConfig.from_pretrained(tmp_path, **override)


def test_loading_resolves_overridden_encoder_settings(tmp_path):
    make().save_pretrained(tmp_path)
    config, unused = AutoConfig.from_pretrained(
        tmp_path, audio_encoders=[{"name": "whisper", "integration": "hybrid"}], return_unused_kwargs=True
    )
    assert config.audio_encoders[0]["projector"] == "qformer" and not unused


def test_save_refuses_options_changed_to_invalid_values(tmp_path):
    config = make()
    config.lal_kv_source = "seperate"
    with pytest.raises(StrictDataclassClassValidationError, match="lal_kv_source"):
        config.save_pretrained(tmp_path)
