"""PAL configuration: one decoder LLM, up to four frozen audio encoders, and how each encoder reaches the LLM."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

MAX_AUDIO_ENCODERS = 4
INTEGRATIONS = ("plits", "lal", "hybrid")
PROJECTORS = ("mlp", "linear", "qformer")
WHISPER_FAMILY = ("whisper",)
CLAP_FAMILY = ("clap_audio_model",)
AST_FAMILY = ("audio-spectrogram-transformer",)
WAVEFORM_FAMILY = ("wav2vec2", "hubert", "data2vec-audio")
ENCODER_SETTING_KEYS = ("name", "integration", "projector", "downsample", "layer")


def default_encoder_settings(name: str, model_type: str, integration: str) -> dict:
    """The defaults table of the design: PLITS stacks 4 frames into a 2-layer MLP, LAL keeps every frame."""
    if integration not in INTEGRATIONS:
        raise ValueError(f"integration for encoder {name!r} must be one of {INTEGRATIONS}, got {integration!r}")
    plits_defaults = {"projector": "mlp", "downsample": 4 if model_type in WHISPER_FAMILY else 1}
    defaults = {
        "plits": plits_defaults,
        "lal": {"projector": "linear", "downsample": 1},
        "hybrid": {"projector": "qformer", "downsample": 1},
    }[integration]
    return {"name": name, "integration": integration, **defaults, "layer": -1}


def clap_token_grid(audio_config: PreTrainedConfig) -> tuple[int, int]:
    """
    `(frequency_bins, time_tokens)` of a CLAP (HTSAT) window's output: `(2, 32)` at real size. HTSAT lays the window's
    `freq_ratio` time chunks on top of each other, so its final `spec_size / (patch_stride · 2^(stages-1))` rows hold
    `freq_ratio` chunks × `frequency_bins`.
    """
    stride = audio_config.patch_stride
    freq_stride, time_stride = (stride, stride) if isinstance(stride, int) else stride
    scale = 2 ** (len(audio_config.depths) - 1)
    freq_ratio = audio_config.spec_size // audio_config.num_mel_bins
    rows = audio_config.spec_size // scale // freq_stride
    return rows // freq_ratio, freq_ratio * (audio_config.spec_size // scale // time_stride)


def ast_patch_grid(audio_config: PreTrainedConfig) -> tuple[int, int]:
    """`(frequency_patches, time_patches)` of an AST window: `(12, 101)` at real size."""
    patch = audio_config.patch_size
    return (
        (audio_config.num_mel_bins - patch) // audio_config.frequency_stride + 1,
        (audio_config.max_length - patch) // audio_config.time_stride + 1,
    )


def _clip(values, low: int | None = None, high: int | None = None):
    """Elementwise clipping of an int, a numpy array or a torch tensor."""
    if hasattr(values, "clip"):
        return values.clip(min=low, max=high)
    values = values if low is None else max(values, low)
    return values if high is None else min(values, high)


def num_encoder_tokens(audio_config: PreTrainedConfig, num_valid_features, num_window_features: int | None = None):
    """
    Valid encoder tokens of one window from its count of valid feature frames (ints, numpy arrays or integer tensors).
    A window's valid features are a prefix of it; the processor's `audio_feature_mask_{k}` marks them.

    - Whisper (mel frames): a stride-2 convolution gives 50 Hz tokens; `ceil(valid / 2)`.
    - CLAP (mel frames of the CLAP feature extractor; `num_window_features` = frames per window, e.g. 1001): the
      `time_tokens` of `clap_token_grid` evenly cover the window, and a token is valid when it starts on a valid frame:
      `ceil(valid × time_tokens / num_window_features)`.
    - AST (filterbank frames): one token per patch column, `time_stride` frames apart, valid when it starts on a valid
      frame: `ceil(valid / time_stride)`, at most the grid's time patches.
    - wav2vec2 / HuBERT / data2vec-audio (waveform samples): the feature encoder runs on the valid samples only, so the
      tokens are its convolutions' output length, `floor((length - kernel) / stride) + 1` per layer (0 when too short).
    """
    model_type = audio_config.model_type
    if model_type in WHISPER_FAMILY:
        return (num_valid_features + 1) // 2
    if model_type in CLAP_FAMILY:
        if num_window_features is None:
            raise ValueError("CLAP token counts need num_window_features, the mel frames of a whole window")
        time_tokens = clap_token_grid(audio_config)[1]
        return -(-num_valid_features * time_tokens // num_window_features)
    if model_type in AST_FAMILY:
        return _clip(-(-num_valid_features // audio_config.time_stride), high=ast_patch_grid(audio_config)[1])
    if model_type in WAVEFORM_FAMILY:
        length = num_valid_features
        for kernel, stride in zip(audio_config.conv_kernel, audio_config.conv_stride):
            length = (length - kernel) // stride + 1
        return _clip(length, low=0)
    raise ValueError(f"Unsupported audio encoder type {model_type!r}")


def num_plits_tokens(settings: dict, num_encoder_tokens_in_window, num_summary_tokens: int):
    """PLITS embeddings one window gives: Q-Former summaries, or its valid tokens stacked by `downsample`."""
    if settings["projector"] == "qformer":
        return num_summary_tokens if num_encoder_tokens_in_window > 0 else 0
    return -(-num_encoder_tokens_in_window // settings["downsample"])


def default_lal_start_layer(num_layers: int) -> int:
    """Delayed integration: layer 4 for LLMs of at least 16 layers (the paper's k = 4), else a quarter of the depth."""
    return 4 if num_layers >= 16 else num_layers // 4


@strict
class PalConfig(PreTrainedConfig):
    r"""
    Configuration of a PAL audio-LLM ([PAL: Probing Audio Encoders via LLMs](https://arxiv.org/abs/2506.10423)).

    Frozen audio encoders feed a decoder-only LLM. Each encoder reaches the LLM in its own way:

    - `"plits"`: projected audio tokens fill placeholder positions of the text and pass through every layer;
    - `"lal"`: from a delayed start layer on, audio enters only as extra keys and values of self-attention
      (text-only queries, no FFN for audio, no residual stream);
    - `"hybrid"`: a Q-Former's summary tokens go in via PLITS while the full sequence goes in via LAL.

    Args:
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the decoder LLM (`llama`, `qwen2`, `qwen3` or `mistral`). Defaults to a `LlamaConfig`.
        audio_config_0 … audio_config_3 (`dict` or `PreTrainedConfig`, *optional*):
            Config of the audio encoder in slot k (a full `WhisperConfig`, a `ClapAudioConfig` without fusion, an
            `ASTConfig`, or a wav2vec2 / HuBERT / data2vec-audio config without adapter). Slots are filled in order,
            without gaps.
        audio_encoders (`list[dict]`, *optional*):
            One entry per filled slot, in slot order, with keys `name` (unique, e.g. `"whisper"`), `integration`
            (`"plits"`, `"lal"` or `"hybrid"`), `projector` (`"mlp"`, `"linear"` or `"qformer"`; the PLITS
            projector), `downsample` (frames stacked per PLITS token) and `layer` (which encoder hidden state to
            use, -1 for the last; CLAP takes -1 only). Missing keys take the defaults of `default_encoder_settings`.
        lal_start_layer (`int`, *optional*):
            First decoder layer that receives LAL audio; every later layer receives it too. Defaults to 4 for LLMs
            of 16 layers or more, else `num_hidden_layers // 4`. Only meaningful when an encoder uses LAL.
        lal_layers (`list[int]`, *optional*):
            Explicit list of LAL layers. After construction this field always holds the resolved, sorted list
            (`[]` when no encoder uses LAL). Setting it together with an inconsistent `lal_start_layer` raises, at
            construction and on `save_pretrained`. `from_pretrained(path, lal_start_layer=k)` (or `lal_layers=`)
            replaces the stored layout.
        lal_audio_visibility (`str`, *optional*, defaults to `"causal"`):
            `"causal"`: a text position sees a LAL clip only at or after that clip's marker token, so a multi-turn
            chat never sees a later turn's audio. `"all"`: every text position sees every clip.
        lal_kv_source (`str`, *optional*, defaults to `"shared"`):
            `"shared"`: audio keys/values come from the layer's own `k_proj`/`v_proj` (and key norm).
            `"separate"`: new `audio_k_proj`/`audio_v_proj` per LAL layer, initialised from the layer's own.
        lal_audio_rope (`bool`, *optional*, defaults to `False`):
            Rotate audio keys with RoPE at positions `-Na … -1` (as if the audio preceded the text). By default
            audio keys carry no rotary position; the encoder's own positional information is inside the features.
        lal_projector (`str`, *optional*, defaults to `"per_layer"`):
            `"per_layer"`: one Linear (encoder width → model width) per LAL layer; `"shared"`: one for all layers.
        num_summary_tokens (`int`, *optional*, defaults to 32):
            Q-Former queries per encoder window (hybrid integration and `projector="qformer"`).
        qformer_num_layers (`int`, *optional*, defaults to 2):
            Depth of the Q-Former.
        projector_hidden_act (`str`, *optional*, defaults to `"gelu"`):
            Activation of the PLITS MLP projector.
        audio_token (`str`, *optional*, defaults to `"<|audio|>"`):
            The token the user writes once per clip; it stays in the text as the clip's LAL marker.
        audio_token_id (`int`, *optional*):
            Its id in the LLM vocabulary.
        audio_placeholder_token (`str`, *optional*, defaults to `"<|audio_pad|>"`):
            The token that PLITS audio embeddings replace.
        audio_placeholder_token_id (`int`, *optional*):
            Its id in the LLM vocabulary.
        tie_word_embeddings (`bool`, *optional*):
            Whether `lm_head` shares the input embeddings; follows `text_config` when unset.

    Example:

    ```python
    >>> from transformers import LlamaConfig, WhisperConfig
    >>> from modeling_pal import PalConfig

    >>> config = PalConfig(
    ...     text_config=LlamaConfig(num_hidden_layers=8),
    ...     audio_config_0=WhisperConfig(),
    ...     audio_encoders=[{"name": "whisper", "integration": "lal"}],
    ...     lal_start_layer=2,
    ... )
    >>> config.lal_layers
    [2, 3, 4, 5, 6, 7]
    ```
    """

    model_type = "pal"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
        **{
            f"audio_config_{k}": SubConfigSpec(config_class=AutoConfig, model_type="whisper", optional=True)
            for k in range(MAX_AUDIO_ENCODERS)
        },
    }

    text_config: dict | PreTrainedConfig | None = None
    audio_config_0: dict | PreTrainedConfig | None = None
    audio_config_1: dict | PreTrainedConfig | None = None
    audio_config_2: dict | PreTrainedConfig | None = None
    audio_config_3: dict | PreTrainedConfig | None = None
    audio_encoders: list[dict] | None = None
    lal_start_layer: int | None = None
    lal_layers: list[int] | None = None
    lal_audio_visibility: str = "causal"
    lal_kv_source: str = "shared"
    lal_audio_rope: bool = False
    lal_projector: str = "per_layer"
    num_summary_tokens: int = 32
    qformer_num_layers: int = 2
    projector_hidden_act: str = "gelu"
    audio_token: str = "<|audio|>"
    audio_token_id: int | None = None
    audio_placeholder_token: str = "<|audio_pad|>"
    audio_placeholder_token_id: int | None = None
    tie_word_embeddings: bool | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.tie_word_embeddings is None:
            self.tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", False))
        self.validate_lal_options()
        self.audio_encoders = self._resolve_encoder_settings()
        self.lal_layers = self._resolve_lal_layers()

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs) -> PalConfig:
        """
        As `PreTrainedConfig.from_dict`, but overrides of PAL's own fields (e.g. `from_pretrained(path,
        lal_start_layer=4)`) are validated and resolved like constructor arguments, instead of being set unchecked on
        the built config. A `lal_start_layer` / `lal_layers` override replaces the stored, already resolved layout.
        """
        own_fields = set(cls.__annotations__) - set(cls.sub_configs_defaults)
        overrides = {key: kwargs.pop(key) for key in own_fields & set(kwargs)}
        if {"lal_start_layer", "lal_layers"} & set(overrides):
            config_dict = {**config_dict, "lal_start_layer": None, "lal_layers": None}
        return super().from_dict({**config_dict, **overrides}, **kwargs)

    def validate_lal_layout(self):
        """`lal_layers` must stay the resolved layout, also after attribute assignments (checked again on save)."""
        resolved = self._resolve_lal_layers()
        if resolved != self.lal_layers:
            raise ValueError(
                f"lal_layers {self.lal_layers} does not match the layout {resolved} the other LAL settings give; "
                "set both lal_start_layer and lal_layers, or build a new PalConfig"
            )

    @property
    def custom_pipelines(self) -> dict:
        """
        Pipelines shipped with the checkpoint for `trust_remote_code` users (`pipeline_pal.py`). A task already
        registered in this process (by `import modeling_pal`) is left out: Transformers prefers a checkpoint's own
        task over the registered one and would then demand `trust_remote_code=True` from package users.
        """
        from transformers.pipelines import PIPELINE_REGISTRY

        registered = set(PIPELINE_REGISTRY.get_supported_tasks())
        shipped = self.__dict__.get("custom_pipelines") or {}
        return {task: spec for task, spec in shipped.items() if task not in registered}

    @custom_pipelines.setter
    def custom_pipelines(self, value: dict) -> None:
        self.__dict__["custom_pipelines"] = value

    @property
    def audio_configs(self) -> list[PreTrainedConfig]:
        """The encoder configs of the filled slots, in slot order."""
        return [getattr(self, f"audio_config_{k}") for k in range(len(self.audio_encoders))]

    @property
    def uses_plits(self) -> bool:
        return any(enc["integration"] in ("plits", "hybrid") for enc in self.audio_encoders)

    @property
    def uses_lal(self) -> bool:
        return any(enc["integration"] in ("lal", "hybrid") for enc in self.audio_encoders)

    def _resolve_encoder_settings(self) -> list[dict]:
        filled = [getattr(self, f"audio_config_{k}") is not None for k in range(MAX_AUDIO_ENCODERS)]
        num_slots = sum(filled)
        if filled != [True] * num_slots + [False] * (MAX_AUDIO_ENCODERS - num_slots):
            raise ValueError(f"audio_config_0…3 must be filled in order without gaps, got filled slots {filled}")
        settings = list(self.audio_encoders or [])
        if len(settings) != num_slots:
            raise ValueError(
                f"audio_encoders has {len(settings)} entries but {num_slots} audio_config slots are filled"
            )
        resolved = []
        for k, entry in enumerate(settings):
            unknown = set(entry) - set(ENCODER_SETTING_KEYS)
            if unknown:
                raise ValueError(
                    f"audio_encoders[{k}] has unknown keys {sorted(unknown)}; known: {ENCODER_SETTING_KEYS}"
                )
            audio_config = getattr(self, f"audio_config_{k}")
            name = entry.get("name", audio_config.model_type)
            base = default_encoder_settings(name, audio_config.model_type, entry.get("integration", "plits"))
            resolved.append(self._validate_encoder_entry(k, {**base, **entry, "name": name}, audio_config))
        names = [entry["name"] for entry in resolved]
        if len(set(names)) != len(names):
            raise ValueError(f"audio_encoders names must be unique, got {names}")
        return resolved

    def _validate_encoder_entry(self, k: int, entry: dict, audio_config: PreTrainedConfig) -> dict:
        if not isinstance(entry["name"], str) or not entry["name"] or "." in entry["name"]:
            raise ValueError(
                f"audio_encoders[{k}].name must be a non-empty string without '.' (it names the encoder's projector "
                f"modules), got {entry['name']!r}"
            )
        if entry["projector"] not in PROJECTORS:
            raise ValueError(f"audio_encoders[{k}].projector must be one of {PROJECTORS}, got {entry['projector']!r}")
        if entry["integration"] == "hybrid" and entry["projector"] != "qformer":
            raise ValueError(f"audio_encoders[{k}].projector must be 'qformer' for hybrid integration")
        if type(entry["downsample"]) is not int or entry["downsample"] < 1:  # bool is an int subclass
            raise ValueError(f"audio_encoders[{k}].downsample must be a positive int, got {entry['downsample']!r}")
        if not isinstance(entry["layer"], int):
            raise ValueError(f"audio_encoders[{k}].layer must be an int, got {entry['layer']!r}")
        if audio_config.model_type in CLAP_FAMILY and entry["layer"] != -1:
            raise ValueError(f"audio_encoders[{k}].layer must be -1 for CLAP (its stages differ in shape)")
        if audio_config.model_type in CLAP_FAMILY and audio_config.enable_fusion:
            raise ValueError(
                f"audio_config_{k}: PAL uses CLAP without fusion (enable_fusion=False, e.g. laion/clap-htsat-unfused)"
            )
        if getattr(audio_config, "add_adapter", False):
            raise ValueError(f"audio_config_{k}: wav2vec2-style encoders with add_adapter=True are not supported")
        return entry

    def _resolve_lal_layers(self) -> list[int]:
        num_layers = self.text_config.num_hidden_layers
        if not self.uses_lal:
            if self.lal_layers or self.lal_start_layer is not None:
                raise ValueError("lal_layers / lal_start_layer are set but no encoder uses LAL integration")
            return []
        start = self.lal_start_layer
        if start is not None and not 0 <= start < num_layers:
            raise ValueError(f"lal_start_layer must be in [0, {num_layers}), got {start}")
        if not self.lal_layers:
            start = default_lal_start_layer(num_layers) if start is None else start
            return list(range(start, num_layers))
        layers = sorted(set(self.lal_layers))
        if layers[0] < 0 or layers[-1] >= num_layers:
            raise ValueError(f"lal_layers must lie in [0, {num_layers}), got {self.lal_layers}")
        if start is not None and layers != list(range(start, num_layers)):
            raise ValueError(f"lal_layers {layers} is inconsistent with lal_start_layer={start}")
        return layers

    def validate_lal_options(self):
        """The option fields hold allowed values, also after attribute assignments (checked again on save)."""
        options = {
            "lal_audio_visibility": ("causal", "all"),
            "lal_kv_source": ("shared", "separate"),
            "lal_projector": ("per_layer", "shared"),
        }
        for field, allowed in options.items():
            if getattr(self, field) not in allowed:
                raise ValueError(f"{field} must be one of {allowed}, got {getattr(self, field)!r}")
        if self.num_summary_tokens < 1:
            raise ValueError(f"num_summary_tokens must be positive, got {self.num_summary_tokens}")
        if self.qformer_num_layers < 1:
            raise ValueError(f"qformer_num_layers must be positive, got {self.qformer_num_layers}")
        if self.audio_token_id is not None and self.audio_token_id == self.audio_placeholder_token_id:
            raise ValueError(
                f"audio_token_id and audio_placeholder_token_id must differ, both are {self.audio_token_id}"
            )


__all__ = ["PalConfig"]
