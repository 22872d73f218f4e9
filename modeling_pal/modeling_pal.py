"""PAL: frozen audio encoders feeding a decoder LLM through PLITS placeholders and/or LAL extra keys/values."""

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import partial
from types import MethodType

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, GenerationConfig, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast, ModelOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.audio_spectrogram_transformer.modeling_audio_spectrogram_transformer import ASTModel
from transformers.models.auto.modeling_auto import MODEL_MAPPING
from transformers.models.blip_2.configuration_blip_2 import Blip2QFormerConfig
from transformers.models.blip_2.modeling_blip_2 import Blip2QFormerModel
from transformers.models.clap.modeling_clap import ClapAudioModel, ClapModel
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    apply_rotary_pos_emb,
    eager_attention_forward,
    rotate_half,
)
from transformers.models.mistral.modeling_mistral import MistralAttention
from transformers.models.qwen2.modeling_qwen2 import Qwen2Attention
from transformers.models.qwen3.modeling_qwen3 import Qwen3Attention
from transformers.models.whisper.modeling_whisper import WhisperEncoder
from transformers.utils import logging
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple

from .configuration_pal import (
    AST_FAMILY,
    CLAP_FAMILY,
    ENCODER_SETTING_KEYS,
    WAVEFORM_FAMILY,
    WHISPER_FAMILY,
    PalConfig,
    ast_patch_grid,
    clap_token_grid,
    num_encoder_tokens,
)
from .pipeline_pal import CUSTOM_PIPELINES

logger = logging.get_logger(__name__)

MAX_SLOTS = 4
RESERVED_TOKEN_PREFIX = "<|reserved_special_token_"  # Llama-3's reserved tokens, reused for PAL's audio tokens
MAX_CLIPS_PER_SAMPLE = 1 << 20
AUDIO_INPUT_PREFIXES = ("audio_features_", "audio_feature_mask_", "audio_window_clip_")
# `from_components`' per-encoder settings: options of the encoder's `from_pretrained`, and of its config entry
ENCODER_LOADING_OPTIONS = ("dtype", "device_map", "revision")
ENCODER_ARCHITECTURE_OPTIONS = tuple(key for key in ENCODER_SETTING_KEYS if key != "name")
AUDIO_INPUT_NAMES = tuple(f"{prefix}{k}" for prefix in AUDIO_INPUT_PREFIXES for k in range(MAX_SLOTS)) + (
    "audio_embeds",
)


# ----------------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class PalAudioFeatures(ModelOutput):
    """
    Encoder output of one audio slot, batch-major like the processor's features, reusable across questions.

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, num_windows, tokens_per_window, encoder_width)`):
            Time-major encoder tokens per window in the LLM's dtype (zeros for padding windows).
        audio_mask (`torch.BoolTensor` of shape `(batch_size, num_windows, tokens_per_window)`):
            Which tokens hold real audio.
        window_clip (`torch.LongTensor` of shape `(batch_size, num_windows)`):
            Clip index of each window within its sample, -1 for padding windows.
    """

    last_hidden_state: torch.FloatTensor | None = None
    audio_mask: torch.BoolTensor | None = None
    window_clip: torch.LongTensor | None = None


@dataclass
class PalModelOutputWithPast(BaseModelOutputWithPast):
    """`BaseModelOutputWithPast` plus `audio_hidden_states`: the PLITS embeddings put into the text, `(N, hidden)`."""

    audio_hidden_states: torch.FloatTensor | None = None


@dataclass
class PalCausalLMOutputWithPast(CausalLMOutputWithPast):
    """`CausalLMOutputWithPast` plus `audio_hidden_states` (see `PalModelOutputWithPast`)."""

    audio_hidden_states: torch.FloatTensor | None = None


# ----------------------------------------------------------------------------------------------------------------------
# Encoder adapters: every encoder family becomes time-major tokens (N, T, C) plus a validity mask (N, T)
# ----------------------------------------------------------------------------------------------------------------------


def _hidden_state(encoder: nn.Module, inputs: torch.Tensor, layer: int) -> torch.Tensor:
    """The encoder's last hidden state (`layer=-1`) or its `hidden_states[layer]`."""
    output = encoder(inputs, output_hidden_states=layer != -1)
    return output.last_hidden_state if layer == -1 else output.hidden_states[layer]


class WhisperAdapter:
    """Whisper encoder (from a full Whisper checkpoint): mel features `(N, mel_bins, frames)` → 50 Hz tokens."""

    model_types = WHISPER_FAMILY
    frame_axis = -1
    feature_dims = ("mel_bins", "frames")  # one window's features

    @staticmethod
    def model_class(config) -> type[PreTrainedModel]:
        return WhisperEncoder

    @staticmethod
    def load(path: str, **kwargs) -> nn.Module:
        return AutoModel.from_pretrained(path, **kwargs).get_encoder()

    @staticmethod
    def width(config) -> int:
        return config.d_model

    @staticmethod
    def encode(encoder: nn.Module, features: torch.Tensor, lengths: torch.Tensor, layer: int) -> torch.Tensor:
        """`(N, mel_bins, frames)` → `(N, max_source_positions, d_model)`."""
        return _hidden_state(encoder, features, layer)


class ClapAdapter:
    """
    CLAP's HTSAT audio tower (from a full `ClapModel` checkpoint, without fusion): mel features `(N, 1, frames, mels)`
    → its channels-first `(N, C, frequency_bins, time)` output with frequency folded into channels, 32 tokens of
    `2 × 768` per window at real size. Windows are zero-padded; the mask marks the padding tokens.
    """

    model_types = CLAP_FAMILY
    frame_axis = -2
    feature_dims = ("channels", "frames", "mel_bins")  # one window's features

    @staticmethod
    def model_class(config) -> type[PreTrainedModel]:
        return ClapAudioModel

    @staticmethod
    def load(path: str, **kwargs) -> nn.Module:
        tower = ClapModel.from_pretrained(path, **kwargs).audio_model
        tower.config._name_or_path = str(path)  # the nested audio config does not remember its checkpoint
        return tower

    @staticmethod
    def width(config) -> int:
        channels = config.patch_embeds_hidden_size * 2 ** (len(config.depths) - 1)
        return channels * clap_token_grid(config)[0]

    @staticmethod
    def encode(encoder: nn.Module, features: torch.Tensor, lengths: torch.Tensor, layer: int) -> torch.Tensor:
        """`(N, 1, frames, mels)` → `(N, time_tokens, frequency_bins × C)`."""
        return _hidden_state(encoder, features, layer).permute(0, 3, 2, 1).flatten(2)


class AstAdapter:
    """AST (from `ASTModel` or `ASTForAudioClassification`): CLS and distillation tokens dropped, frequency pooled."""

    model_types = AST_FAMILY
    frame_axis = -2
    feature_dims = ("frames", "mel_bins")  # one window's features

    @staticmethod
    def model_class(config) -> type[PreTrainedModel]:
        return ASTModel

    @staticmethod
    def load(path: str, **kwargs) -> nn.Module:
        return AutoModel.from_pretrained(path, **kwargs)

    @staticmethod
    def width(config) -> int:
        return config.hidden_size

    @staticmethod
    def encode(encoder: nn.Module, features: torch.Tensor, lengths: torch.Tensor, layer: int) -> torch.Tensor:
        """`(N, frames, mel_bins)` → patch grid `(N, freq, time, C)` → frequency mean `(N, time_patches, C)`."""
        patches = _hidden_state(encoder, features, layer)[:, 2:]
        return patches.unflatten(1, ast_patch_grid(encoder.config)).mean(1)


class WaveformAdapter:
    """
    wav2vec2 / HuBERT / data2vec-audio (base or CTC checkpoints): waveforms `(N, samples)`. Each window runs trimmed to
    its valid samples (windows of equal length together), so padding never reaches the encoder. Frozen towers stay in
    eval mode, so SpecAugment and layerdrop never apply.
    """

    model_types = WAVEFORM_FAMILY
    frame_axis = -1
    feature_dims = ("samples",)  # one window's features

    @staticmethod
    def model_class(config) -> type[PreTrainedModel]:
        return MODEL_MAPPING[type(config)]

    @staticmethod
    def load(path: str, **kwargs) -> nn.Module:
        return AutoModel.from_pretrained(path, **kwargs)

    @staticmethod
    def width(config) -> int:
        return config.hidden_size

    @staticmethod
    def encode(encoder: nn.Module, features: torch.Tensor, lengths: torch.Tensor, layer: int) -> torch.Tensor:
        """`(N, samples)` with `lengths` valid samples each → `(N, tokens of a full window, hidden_size)`."""
        config = encoder.config
        tokens = features.new_zeros(len(features), num_encoder_tokens(config, features.shape[-1]), config.hidden_size)
        for length in lengths.unique().tolist():
            if num_encoder_tokens(config, length) > 0:
                rows = lengths == length
                hidden = _hidden_state(encoder, features[rows, :length], layer)
                tokens[rows, : hidden.shape[1]] = hidden
        return tokens


AUDIO_ENCODER_ADAPTERS = {
    model_type: adapter
    for adapter in (WhisperAdapter, ClapAdapter, AstAdapter, WaveformAdapter)
    for model_type in adapter.model_types
}


def audio_encoder_adapter(config) -> type:
    """The adapter of an encoder config; unknown model types raise a `ValueError` naming them."""
    adapter = AUDIO_ENCODER_ADAPTERS.get(config.model_type)
    if adapter is None:
        raise ValueError(
            f"Unsupported audio encoder type {config.model_type!r}; supported: {sorted(AUDIO_ENCODER_ADAPTERS)}"
        )
    return adapter


def supports_attention(model: PreTrainedModel | type[PreTrainedModel], attn_implementation: str) -> bool:
    """Whether an encoder (class or instance) implements `attn_implementation`; hub kernels count as unsupported."""
    return {
        "eager": True,
        "sdpa": model._supports_sdpa,
        "flash_attention_2": model._supports_flash_attn,
        "flex_attention": model._supports_flex_attn,
    }.get(attn_implementation, False)


def check_encoder_layer(settings: dict, config) -> None:
    """`settings["layer"]` must name one of the encoder's hidden states (`num_hidden_layers + 1` of them, or -1)."""
    layer = settings["layer"]
    if layer != -1 and not -config.num_hidden_layers - 1 <= layer <= config.num_hidden_layers:
        raise ValueError(
            f"Audio encoder {settings['name']!r}: layer {layer} is out of range; its {config.model_type} encoder has "
            f"{config.num_hidden_layers} layers, so hidden states {-config.num_hidden_layers - 1} … "
            f"{config.num_hidden_layers} (-1 = the last)"
        )


def check_window_shapes(
    slot: int,
    adapter: type,
    features: torch.Tensor,
    mask: torch.Tensor | None,
    window_clip: torch.Tensor | None,
) -> None:
    """
    Slot `slot`'s features must be `(batch, num_windows, *adapter.feature_dims)`, its mask `(batch, num_windows,
    frames)` and its clip indices `(batch, num_windows)`: malformed inputs raise here, not inside torch.
    """
    layout = ("batch", "num_windows", *adapter.feature_dims)
    if features.dim() != len(layout):
        raise ValueError(f"audio_features_{slot} must have shape ({', '.join(layout)}), got {tuple(features.shape)}")
    windows = tuple(features.shape[:2])
    expected = {
        f"audio_feature_mask_{slot}": (mask, (*windows, features.shape[adapter.frame_axis])),
        f"audio_window_clip_{slot}": (window_clip, windows),
    }
    for name, (tensor, shape) in expected.items():
        if tensor is not None and tuple(tensor.shape) != shape:
            raise ValueError(
                f"{name} must have shape {shape} to fit audio_features_{slot} {tuple(features.shape)}, "
                f"got {tuple(tensor.shape)}"
            )


def build_audio_tower(config) -> PreTrainedModel:
    """The encoder of `config`; a requested attention implementation it lacks falls back to eager (CLAP has no SDPA)."""
    model_class = audio_encoder_adapter(config).model_class(config)
    requested = config._attn_implementation
    if requested is not None and not supports_attention(model_class, requested):
        config._attn_implementation = "eager"
    return model_class(config)


# ----------------------------------------------------------------------------------------------------------------------
# Projectors
# ----------------------------------------------------------------------------------------------------------------------


class PalPlitsProjector(nn.Module):
    """Stacks `downsample` consecutive frames and maps them to the LLM width with a Linear or a 2-layer MLP."""

    def __init__(self, in_dim: int, out_dim: int, downsample: int, kind: str, act: str):
        super().__init__()
        self.downsample = downsample
        self.linear_1 = nn.Linear(in_dim * downsample, out_dim)
        self.act = ACT2FN[act] if kind == "mlp" else None
        self.linear_2 = nn.Linear(out_dim, out_dim) if kind == "mlp" else None

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        `(N, T, C)`, `(N, T)` → `(N, ceil(T / downsample), out_dim)` and its mask (a group is valid if it starts
        valid).
        """
        num, length, width = tokens.shape
        pad = -length % self.downsample
        tokens = nn.functional.pad(tokens * mask[..., None], (0, 0, 0, pad))
        stacked = tokens.reshape(num, (length + pad) // self.downsample, width * self.downsample)
        hidden = self.linear_1(stacked)
        if self.linear_2 is not None:
            hidden = self.linear_2(self.act(hidden))
        return hidden, mask[:, :: self.downsample]


class PalQFormerProjector(nn.Module):
    """A BLIP-2 Q-Former: `num_queries` learned queries cross-attend to one window's tokens → summary tokens."""

    def __init__(self, in_dim: int, out_dim: int, num_queries: int, num_layers: int):
        super().__init__()
        num_heads = next(h for h in (8, 4, 2, 1) if in_dim % h == 0)
        qformer_config = Blip2QFormerConfig(
            hidden_size=in_dim,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            intermediate_size=4 * in_dim,
            cross_attention_frequency=1,
            encoder_hidden_size=in_dim,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        self.query_tokens = nn.Parameter(torch.zeros(1, num_queries, in_dim))
        self.qformer = Blip2QFormerModel(qformer_config)
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(N, T, C)`, `(N, T)` → `(N, num_queries, out_dim)`; windows without audio give invalid summaries."""
        queries = self.query_tokens.expand(tokens.shape[0], -1, -1)
        summary = self.qformer(
            query_embeds=queries, encoder_hidden_states=tokens, encoder_attention_mask=mask.long()
        ).last_hidden_state
        window_valid = mask.any(-1, keepdim=True).expand(-1, queries.shape[1])
        return self.linear(summary), window_valid


# ----------------------------------------------------------------------------------------------------------------------
# LAL attention: text queries over [audio keys ; text keys], one softmax, no RoPE on audio unless asked
# ----------------------------------------------------------------------------------------------------------------------


class PalMaskMemo:
    """
    The last extended mask (see `extend_attention_mask`), reused while the text mask (the same object), the text key
    length, the query offset, the query length and the dtype repeat: all LAL layers of a forward or decoding step share
    one mask. The same for the split attention's audio bias (`split_bias`).
    """

    def __init__(self):
        self.entry: tuple | None = None
        self.bias_entry: tuple | None = None

    def extended(
        self,
        text_mask: torch.Tensor | None,
        audio_visible: torch.Tensor,
        text_kv_length: int,
        query_offset: int,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """`extend_attention_mask(...)`: `(B, 1, Q, Na + K)`, built once per distinct input."""
        key = (text_kv_length, query_offset, audio_visible.shape[1], dtype)
        if self.entry is None or self.entry[0] is not text_mask or self.entry[1] != key:
            # the entry keeps `text_mask` alive, so no later mask can take over its identity
            mask = extend_attention_mask(text_mask, audio_visible, text_kv_length, query_offset, dtype)
            self.entry = (text_mask, key, mask)
        return self.entry[2]

    def split_bias(self, audio_visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
        """`split_audio_attention`'s `audio_bias (B, 1, Q, Na)`, None when every query sees every column."""
        key = (audio_visible.shape, dtype)
        if self.bias_entry is None or self.bias_entry[0] != key:
            self.bias_entry = (key, None if audio_visible.all() else visibility_bias(audio_visible[:, None], dtype))
        return self.bias_entry[1]


@dataclass
class PalLalInputs:
    """
    What LAL layers need at prefill (or at every step without a cache).

    Args:
        audio_states: per LAL layer, the projected audio `(batch, num_audio_columns, hidden)`; the layer normalises
            it with `audio_norms[layer]` (its own input norm) inside its forward, where FSDP has gathered the layer's
            parameters, and feeds it to its k/v projections.
        audio_norms: per LAL layer, that layer's input norm module.
        audio_visible: `(batch, query_length, num_audio_columns)`, which text queries see which audio column.
        audio_valid: `(batch, num_audio_columns)`, which columns hold audio (kept for decoding steps).
        audio_position_embeddings: RoPE `(cos, sin)` of the audio columns when `lal_audio_rope` is on.
        masks: the extended masks of this forward, shared by its LAL layers.
    """

    audio_states: dict[int, torch.Tensor]
    audio_norms: dict[int, nn.Module]
    audio_visible: torch.Tensor
    audio_valid: torch.Tensor
    audio_position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None
    masks: PalMaskMemo = field(default_factory=PalMaskMemo)


class PalJointKV:
    """
    One LAL layer's cached `[audio ; text]` keys and values: buffers `(batch, kv_heads, capacity, head_dim)` whose
    first `length` positions are filled, the `num_audio` audio columns first. While the cache's text only grows (a
    dynamic cache), each decoding step writes its new text K/V in place (capacity doubles when full) instead of
    copying the audio K/V again.
    """

    def __init__(self, audio_key: torch.Tensor, audio_value: torch.Tensor):
        self.num_audio = self.length = audio_key.shape[2]
        self.keys, self.values = audio_key, audio_value

    def audio(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The audio keys/values `(batch, kv_heads, num_audio, head_dim)`."""
        return self.keys[:, :, : self.num_audio], self.values[:, :, : self.num_audio]

    def concatenated(self, text_key: torch.Tensor, text_value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`[audio ; text]` as new tensors `(batch, kv_heads, num_audio + K, head_dim)`, for any cache."""
        audio_key, audio_value = self.audio()
        return torch.cat([audio_key, text_key], dim=2), torch.cat([audio_value, text_value], dim=2)

    def appended(
        self, text_key: torch.Tensor, text_value: torch.Tensor, num_new: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        `[audio ; text]` as views `(batch, kv_heads, num_audio + K, head_dim)` of the buffers, for a cache whose text
        K/V `(batch, kv_heads, K, head_dim)` end with `num_new` new positions. Only those are copied, unless the text
        is not the buffered one plus them (cropped, replaced): then all of it is.
        """
        text_length = text_key.shape[2]
        if self.length != self.num_audio + text_length - num_new:
            self.length, num_new = self.num_audio, text_length
        end = self.length + num_new
        if end > self.keys.shape[2]:
            self.keys, self.values = self._grown(self.keys, end), self._grown(self.values, end)
        self.keys[:, :, self.length : end] = text_key[:, :, text_length - num_new :]
        self.values[:, :, self.length : end] = text_value[:, :, text_length - num_new :]
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def _grown(self, buffer: torch.Tensor, needed: int) -> torch.Tensor:
        """A copy of `buffer`'s filled part with room for `needed` positions and as many text positions again."""
        capacity = needed + max(needed - self.num_audio, 64)
        grown = buffer.new_empty(*buffer.shape[:2], capacity, buffer.shape[3])
        grown[:, :, : self.length] = buffer[:, :, : self.length]
        return grown

    def map(self, fn) -> None:
        """Applies a batch-dimension operation to the buffers."""
        self.keys, self.values = fn(self.keys), fn(self.values)


class PalAudioKVStore:
    """Audio keys/values of the LAL layers, attached to the generation cache and reused at every decoding step."""

    def __init__(self):
        self.layers: dict[int, PalJointKV] = {}
        self.valid: torch.Tensor | None = None
        self.masks = PalMaskMemo()

    def audio_key_values(self) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Per LAL layer, its audio keys/values `(batch, kv_heads, num_audio, head_dim)`."""
        return {layer: joint.audio() for layer, joint in self.layers.items()}

    def put(self, layer: int, joint: PalJointKV, valid: torch.Tensor) -> None:
        """Stores a LAL layer's audio K/V at prefill, with the columns' validity `(batch, Na)`."""
        self.layers[layer], self.valid, self.masks = joint, valid, PalMaskMemo()

    def map(self, fn) -> None:
        """Applies a batch-dimension operation (beam reorder, expansion, selection) to every stored tensor."""
        for joint in self.layers.values():
            joint.map(fn)
        self.valid = fn(self.valid) if self.valid is not None else None
        self.masks = PalMaskMemo()

    def clear(self) -> None:
        self.layers, self.valid, self.masks = {}, None, PalMaskMemo()


# Batch operations generate applies to its cache (beam reordering, expansion, selection), mirrored on the audio store.
BATCH_OPERATIONS = {
    "reorder_cache": lambda tensor, beam_idx: tensor.index_select(0, beam_idx.to(tensor.device)),
    "batch_select_indices": lambda tensor, indices: tensor[indices.to(tensor.device)],
    "batch_repeat_interleave": lambda tensor, repeats: tensor.repeat_interleave(repeats, dim=0),
}


def audio_kv_store(cache: Cache) -> PalAudioKVStore:
    """
    The audio store of `cache`, created on first use. `generate` builds the cache itself (dynamic or static), so the
    store rides on that instance, whose batch operations and `reset` are extended to keep the store aligned. They are
    bound to the instance, so those of a deep copy act on the copy and its own store.
    """
    store = getattr(cache, "pal_audio_store", None)
    if store is None:
        store = cache.pal_audio_store = PalAudioKVStore()
        for name in (*BATCH_OPERATIONS, "reset"):
            setattr(cache, name, MethodType(partial(_mirrored_on_store, name), cache))
    return store


def _mirrored_on_store(name: str, cache: Cache, *args):
    """`cache.<name>(*args)` as its class defines it, then the same on its audio store (`reset` clears it)."""
    result = getattr(type(cache), name)(cache, *args)
    operation = BATCH_OPERATIONS.get(name)
    if operation is None:
        cache.pal_audio_store.clear()
    else:
        cache.pal_audio_store.map(lambda tensor: operation(tensor, *args))
    return result


def _text_only_grows(cache: Cache, layer_idx: int) -> bool:
    """
    Whether `cache`'s layer returns all past text K/V plus the new ones at each update (a plain dynamic layer; not a
    static, sliding-window or quantised one), and no gradient flows (in-place buffer writes would break autograd).
    """
    layers = getattr(cache, "layers", None)
    return not torch.is_grad_enabled() and layers is not None and type(layers[layer_idx]) is DynamicLayer


class PalLalAttentionMixin:
    """
    Turns a family's self-attention into a LAL layer: after the usual text q/k/v (with RoPE and cache update), audio
    keys/values `k_proj(Z)`, `v_proj(Z)` (plus the family's key norm) are prepended on the key axis, where `Z` is the
    layer's normalised audio projection. Audio has no query, no output row and never reaches the FFN.
    """

    def __init__(self, config, layer_idx: int, kv_source: str = "shared"):
        super().__init__(config, layer_idx)
        self.lal_kv_source = kv_source
        if kv_source == "separate":
            self.audio_k_proj = nn.Linear(*self.k_proj.weight.shape[::-1], bias=self.k_proj.bias is not None)
            self.audio_v_proj = nn.Linear(*self.v_proj.weight.shape[::-1], bias=self.v_proj.bias is not None)

    def family_attention_kwargs(self) -> dict:
        return {}

    def init_audio_projections(self) -> None:
        """Separate `audio_k_proj`/`audio_v_proj` start as the layer's own (unless loaded from a checkpoint)."""
        for audio, own in ((self.audio_k_proj, self.k_proj), (self.audio_v_proj, self.v_proj)):
            for name, parameter in audio.named_parameters():
                init.copy_(parameter, own.get_parameter(name))

    def audio_key_values(self, inputs: PalLalInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Audio keys/values `(batch, kv_heads, num_audio_columns, head_dim)` of this layer (transposed views), on this
        layer's device (with `device_map`, the model-level audio inputs may sit on another one).
        """
        shared = self.lal_kv_source == "shared"
        k_proj = self.k_proj if shared else self.audio_k_proj
        v_proj = self.v_proj if shared else self.audio_v_proj
        states = inputs.audio_states[self.layer_idx].to(k_proj.weight.device)
        states = inputs.audio_norms[self.layer_idx](states)
        shape = (*states.shape[:-1], -1, self.head_dim)
        keys = k_proj(states).view(shape)
        if hasattr(self, "k_norm"):
            keys = self.k_norm(keys)
        keys = keys.transpose(1, 2)
        if inputs.audio_position_embeddings is not None:
            cos, sin = (tensor.to(keys.device).unsqueeze(1) for tensor in inputs.audio_position_embeddings)
            keys = keys * cos + rotate_half(keys) * sin
        return keys, v_proj(states).view(shape).transpose(1, 2)

    def text_query_key_values(self, hidden_states, position_embeddings):
        hidden_shape = (*hidden_states.shape[:-1], -1, self.head_dim)
        query = self.q_proj(hidden_states).view(hidden_shape)
        key = self.k_proj(hidden_states).view(hidden_shape)
        if hasattr(self, "q_norm"):
            query, key = self.q_norm(query), self.k_norm(key)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        cos, sin = position_embeddings
        query, key = apply_rotary_pos_emb(query.transpose(1, 2), key.transpose(1, 2), cos, sin)
        return query, key, value

    def joint_key_values(
        self, key: torch.Tensor, value: torch.Tensor, num_new: int, cache: Cache | None, pal_lal: PalLalInputs | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, PalMaskMemo]:
        """
        `[audio ; text]` keys and values `(batch, kv_heads, Na + K, head_dim)` from the (cached) text ones
        `(batch, kv_heads, K, head_dim)`, the audio visibility `(batch, Q, Na)` and the mask memo to use. At prefill
        the audio K/V are computed (and stored with a cache); at decoding steps they come from the store.
        """
        store = audio_kv_store(cache) if cache is not None else None
        buffered = store is not None and _text_only_grows(cache, self.layer_idx)
        if pal_lal is not None:
            audio = [tensor.to(key.dtype) for tensor in self.audio_key_values(pal_lal)]
            if store is not None and not buffered:  # concatenated at every step: contiguous copies read faster
                audio = [tensor.contiguous() for tensor in audio]
            joint, visible, masks = PalJointKV(*audio), pal_lal.audio_visible.to(key.device), pal_lal.masks
            if store is not None:
                store.put(self.layer_idx, joint, pal_lal.audio_valid)
        else:  # decoding step: every new query comes after all clips' markers
            joint, masks = store.layers[self.layer_idx], store.masks
            visible = store.valid[:, None, :].expand(-1, num_new, -1).to(key.device)
        key_values = joint.appended(key, value, num_new) if buffered else joint.concatenated(key, value)
        return (*key_values, visible, masks)

    def splits_attention(
        self, query: torch.Tensor, key: torch.Tensor, text_mask: torch.Tensor | None, text_kv_length: int
    ) -> bool:
        """
        Whether this call takes `split_audio_attention`: SDPA on CPU over a purely causal text of at least
        `SPLIT_ATTENTION_MIN_TEXT` positions (no padding mask, no past keys: training or a prefill without padding, no
        sliding window shorter than the text), audio columns present, no attention dropout.
        """
        window = self.family_attention_kwargs().get("sliding_window")
        return (
            SPLIT_ATTENTION_AVAILABLE
            and self.config._attn_implementation == "sdpa"
            and query.device.type == "cpu"
            and text_mask is None
            and query.shape[2] == text_kv_length >= SPLIT_ATTENTION_MIN_TEXT
            and key.shape[2] > text_kv_length
            and (window is None or window >= text_kv_length)
            and not (self.training and self.attention_dropout > 0)
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        pal_lal: PalLalInputs | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if pal_lal is None and (cache is None or self.layer_idx not in audio_kv_store(cache).layers):
            return super().forward(hidden_states, position_embeddings, attention_mask, cache=cache, **kwargs)

        query, key, value = self.text_query_key_values(hidden_states, position_embeddings)
        query_offset = query_offset_without_mask(cache, self.layer_idx, attention_mask)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx, kwargs=kwargs)
        text_kv_length = key.shape[2]
        key, value, audio_visible, masks = self.joint_key_values(key, value, query.shape[2], cache, pal_lal)
        if self.splits_attention(query, key, attention_mask, text_kv_length):
            bias = masks.split_bias(audio_visible, query.dtype)
            attn_output = split_audio_attention(query, key, value, text_kv_length, bias, self.scaling)
            return self.o_proj(attn_output.reshape(*hidden_states.shape[:-1], -1)), None
        attention_mask = masks.extended(attention_mask, audio_visible, text_kv_length, query_offset, query.dtype)
        attention_interface = lal_attention_interface(self.config._attn_implementation, query, key)
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            **self.family_attention_kwargs(),
            **kwargs,
        )
        attn_output = attn_output.reshape(*hidden_states.shape[:-1], -1).contiguous()
        return self.o_proj(attn_output), attn_weights


# Below this many text positions (PLITS tokens included) the joint masked kernel is as fast or faster on CPU: the split
# saves the text's upper triangle, which only then outweighs the repeated K/V heads and the second kernel call
# (PAL step, CPU shapes: +6 % at 314 positions, -2.5 % at 1064, -14 % at 3814; docs/benchmarks.md, finding 3).
SPLIT_ATTENTION_MIN_TEXT = 1024
SPLIT_ATTENTION_AVAILABLE = hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward")


class PalSplitAttention(torch.autograd.Function):
    """
    `[audio ; causal text]` attention on CPU as two flash-attention calls, merged by their log-sum-exps: the dense
    audio block, and the text block with `is_causal` (an explicit joint mask would make the kernel compute the text's
    upper triangle too). The backward runs each block's flash backward with the merged output and log-sum-exp, which
    gives each block the joint attention's probabilities and row terms: the gradients are exact.

    Inputs `(batch, heads, length, head_dim)`, K/V heads already repeated to the query heads; `audio_bias`
    `(batch, 1, Q, Na)` additive (0, or the dtype's minimum where a query may not see a column) or None.
    """

    @staticmethod
    def forward(ctx, query, audio_key, audio_value, text_key, text_value, audio_bias, scale):
        flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
        audio_out, audio_lse = flash(query, audio_key, audio_value, 0.0, False, attn_mask=audio_bias, scale=scale)
        text_out, text_lse = flash(query, text_key, text_value, 0.0, True, scale=scale)
        lse = torch.logaddexp(audio_lse, text_lse)
        weights = [(block_lse - lse).exp().unsqueeze(-1) for block_lse in (audio_lse, text_lse)]
        out = (audio_out.float() * weights[0] + text_out.float() * weights[1]).to(query.dtype)
        ctx.save_for_backward(query, audio_key, audio_value, text_key, text_value, audio_bias, out, lse)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, audio_key, audio_value, text_key, text_value, audio_bias, out, lse = ctx.saved_tensors
        flash_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
        grad_out = grad_out.contiguous()
        audio = flash_backward(
            grad_out, query, audio_key, audio_value, out, lse, 0.0, False, attn_mask=audio_bias, scale=ctx.scale
        )
        text = flash_backward(grad_out, query, text_key, text_value, out, lse, 0.0, True, scale=ctx.scale)
        return audio[0] + text[0], audio[1], audio[2], text[1], text[2], None, None


def split_audio_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    text_kv_length: int,
    audio_bias: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """
    `PalSplitAttention` for a LAL layer: `query (B, heads, Q, D)`, the `[audio ; text]` `key`/`value`
    `(B, kv_heads, Na + Q, D)`, the additive `audio_bias (B, 1, Q, Na)` or None → `(B, Q, heads, D)`, as Transformers'
    attention functions return.
    """
    groups = query.shape[1] // key.shape[1]
    sizes = [key.shape[2] - text_kv_length, text_kv_length]

    def per_head(tensor: torch.Tensor) -> torch.Tensor:  # the flash kernel has no grouped-query mode
        return tensor.repeat_interleave(groups, dim=1) if groups > 1 else tensor.contiguous()

    audio_key, text_key = (per_head(part) for part in key.split(sizes, dim=2))
    audio_value, text_value = (per_head(part) for part in value.split(sizes, dim=2))
    out = PalSplitAttention.apply(query.contiguous(), audio_key, audio_value, text_key, text_value, audio_bias, scale)
    return out.transpose(1, 2)


def lal_attention_interface(implementation: str, query: torch.Tensor, key: torch.Tensor) -> Callable:
    """
    The attention function of a LAL layer: the configured one, except SDPA with grouped K/V heads and several queries
    on CPU, where `sdpa_gqa_attention_forward` lets the kernel handle the groups (the stock one repeats the `Na + K`
    keys/values per query head whenever a mask is given; CUDA kernels with a mask would fall back to math with GQA).
    """
    grouped = query.shape[1] != key.shape[1]
    if implementation == "sdpa" and grouped and query.shape[2] > 1 and query.device.type == "cpu":
        return sdpa_gqa_attention_forward
    return ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)


def sdpa_gqa_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """
    SDPA over grouped heads without repeating them: `query (B, heads, Q, D)`, `key`/`value (B, kv_heads, Na + K, D)`,
    the explicit mask `(B, 1, Q, Na + K)` → `(B, Q, heads, D)`, as Transformers' attention functions return.
    """
    attn_output = nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, enable_gqa=True
    )
    return attn_output.transpose(1, 2).contiguous(), None


def query_offset_without_mask(cache: Cache | None, layer_idx: int, attention_mask: torch.Tensor | None) -> int:
    """
    The absolute position of the first query when Transformers passes no mask (SDPA's `is_causal` then stands for
    it): the cache's length before this step's update, 0 without a cache. With a static cache the keys also hold the
    empty slots after it, so the text key length alone cannot tell. 0 when a mask is given (it is not needed).
    """
    if cache is None or attention_mask is not None:
        return 0
    return int(cache.get_query_offset(layer_idx))  # a static layer's offset is a tensor that `update` increments


def extend_attention_mask(
    text_mask: torch.Tensor | None,
    audio_visible: torch.Tensor,
    text_kv_length: int,
    query_offset: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """
    Prepends audio columns to the text mask, always returning an explicit 4-D mask (an implicit causal mask would make
    SDPA drop keys). `text_mask`: `None`, bool `(B|1, 1, Q, K)` (True = attend) or additive float; `audio_visible`:
    bool `(B, Q, Na)`. Without a text mask, query i sits at position `query_offset + i` and sees the text keys up to
    it (none of a static cache's empty slots). Returns the same kind as the text mask (bool when it was `None`), shape
    `(B, 1, Q, Na + K)`.
    """
    batch, query_length, _ = audio_visible.shape
    if text_mask is None:
        rows = torch.arange(query_length, device=audio_visible.device)[:, None] + query_offset
        text_mask = (torch.arange(text_kv_length, device=audio_visible.device)[None, :] <= rows)[None, None]
    text_mask = text_mask.expand(batch, 1, query_length, text_mask.shape[-1])
    audio_visible = audio_visible[:, None]
    if text_mask.dtype == torch.bool:
        return torch.cat([audio_visible, text_mask], dim=-1)
    return torch.cat([visibility_bias(audio_visible, text_mask.dtype), text_mask], dim=-1)


def visibility_bias(audio_visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The additive form of a visibility mask: 0 where a query sees a column, the dtype's minimum elsewhere."""
    bias = torch.zeros(audio_visible.shape, dtype=dtype, device=audio_visible.device)
    return bias.masked_fill(~audio_visible, torch.finfo(dtype).min)


class PalLlamaAttention(PalLalAttentionMixin, LlamaAttention):
    pass


class PalMistralAttention(PalLalAttentionMixin, MistralAttention):
    def family_attention_kwargs(self) -> dict:
        return {"sliding_window": getattr(self.config, "sliding_window", None)}


class PalQwen2Attention(PalLalAttentionMixin, Qwen2Attention):
    def family_attention_kwargs(self) -> dict:
        return {"sliding_window": self.sliding_window}


class PalQwen3Attention(PalLalAttentionMixin, Qwen3Attention):
    def family_attention_kwargs(self) -> dict:
        return {"sliding_window": self.sliding_window}


LAL_ATTENTION_CLASSES = {
    "llama": PalLlamaAttention,
    "mistral": PalMistralAttention,
    "qwen2": PalQwen2Attention,
    "qwen3": PalQwen3Attention,
}


# ----------------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------------


class PalPreTrainedModel(PreTrainedModel):
    config: PalConfig
    base_model_prefix = "model"
    input_modalities = ("audio", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = [
        "LlamaDecoderLayer",
        "MistralDecoderLayer",
        "Qwen2DecoderLayer",
        "Qwen3DecoderLayer",
        "WhisperEncoderLayer",
        "ClapAudioStage",
        "ASTLayer",
        "Wav2Vec2EncoderLayer",
        "Wav2Vec2EncoderLayerStableLayerNorm",
        "HubertEncoderLayer",
        "HubertEncoderLayerStableLayerNorm",
        "Data2VecAudioEncoderLayer",
    ]
    _skip_keys_device_placement = ["cache"]
    _supports_sdpa = True
    _supports_flash_attn = False  # audio columns need an explicit mask; FlashAttention is untested here
    _supports_flex_attn = False
    _can_compile_fullgraph = False  # the audio K/V store is a Python-side attribute of the cache

    def save_pretrained(self, save_directory, *args, **kwargs):
        """
        Also advertises `AutoModel` in `auto_map` and ships the "audio-text-to-text" pipeline (`pipeline_pal.py`,
        copied because this module imports it), so remote-code users get both classes and the pipeline.
        """
        self.config.custom_pipelines = {**self.config.custom_pipelines, **CUSTOM_PIPELINES}
        self.config.auto_map = {
            **(getattr(self.config, "auto_map", None) or {}),
            "AutoConfig": "configuration_pal.PalConfig",
            "AutoModel": "modeling_pal.PalModel",
            "AutoModelForMultimodalLM": "modeling_pal.PalForConditionalGeneration",
        }
        return super().save_pretrained(save_directory, *args, **kwargs)

    def set_attn_implementation(self, attn_implementation: str | dict, allow_all_kernels: bool = False):
        """A string applies to the LLM and to every encoder that supports it; the others use eager (CLAP: no SDPA)."""
        if isinstance(attn_implementation, str):
            towers = self.base_model.audio_towers
            attn_implementation = _attention_per_submodel(
                towers, attn_implementation, [attn_implementation] * len(towers)
            )
        return super().set_attn_implementation(attn_implementation, allow_all_kernels=allow_all_kernels)

    def _init_weights(self, module):
        std = self.config.text_config.initializer_range
        if isinstance(module, PalQFormerProjector):
            nn.init.normal_(module.query_tokens, std=std)
        super()._init_weights(module)

    def _initialize_missing_keys(self, is_quantized: bool) -> None:
        """
        Also starts separate audio projections missing from a checkpoint (e.g. one trained with shared ones) as their
        layer's `k_proj`/`v_proj`; the LLM's own `_init_weights` would draw them at random.
        """
        super()._initialize_missing_keys(is_quantized)
        self.base_model.init_separate_audio_projections()


def _gather_columns(values: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Packs each sample's valid entries to the left, in order: `values (B, L, ...)`, `valid (B, L)` →
    `(B, max_valid, ...)` and the new validity `(B, max_valid)`.
    """
    order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)
    width = int(valid.sum(1).max().item()) if valid.numel() else 0
    order = order[:, :width]
    index = order.view(*order.shape, *([1] * (values.dim() - 2))).expand(-1, -1, *values.shape[2:])
    return values.gather(1, index), valid.gather(1, order)


class PalModel(PalPreTrainedModel):
    """
    The PAL base model: `audio_towers` (frozen encoders, one per slot), `plits_projectors` / `lal_projectors`
    (the connectors) and `language_model` (the decoder LLM, whose LAL layers use PAL attention).
    """

    def __init__(self, config: PalConfig):
        super().__init__(config)
        text_config = config.text_config
        for sub_config in (text_config, *config.audio_configs):
            sub_config.dtype = sub_config.dtype or config.dtype
        self.language_model = AutoModel.from_config(text_config)
        self.audio_towers = nn.ModuleList([build_audio_tower(audio_config) for audio_config in config.audio_configs])
        self.audio_towers.requires_grad_(False)
        self.plits_projectors = nn.ModuleDict()
        self.lal_projectors = nn.ModuleDict()
        for settings, audio_config in zip(config.audio_encoders, config.audio_configs):
            check_encoder_layer(settings, audio_config)
            width = audio_encoder_adapter(audio_config).width(audio_config)
            if settings["integration"] in ("plits", "hybrid"):
                self.plits_projectors[settings["name"]] = self._plits_projector(settings, width)
            if settings["integration"] in ("lal", "hybrid"):
                layers = config.lal_layers if config.lal_projector == "per_layer" else ["shared"]
                self.lal_projectors[settings["name"]] = nn.ModuleDict(
                    {str(layer): nn.Linear(width, text_config.hidden_size) for layer in layers}
                )
        self._install_lal_attention()
        self.post_init()

    def init_separate_audio_projections(self) -> None:
        """With `lal_kv_source="separate"`, each LAL layer's audio projections start as its `k_proj`/`v_proj`."""
        for layer_idx in self.config.lal_layers if self.config.lal_kv_source == "separate" else []:
            self.language_model.layers[layer_idx].self_attn.init_audio_projections()

    def _plits_projector(self, settings: dict, width: int) -> nn.Module:
        hidden = self.config.text_config.hidden_size
        if settings["projector"] == "qformer":
            return PalQFormerProjector(width, hidden, self.config.num_summary_tokens, self.config.qformer_num_layers)
        return PalPlitsProjector(
            width, hidden, settings["downsample"], settings["projector"], self.config.projector_hidden_act
        )

    def _install_lal_attention(self) -> None:
        if not self.config.lal_layers:
            return
        model_type = self.config.text_config.model_type
        if model_type not in LAL_ATTENTION_CLASSES:
            raise ValueError(f"LAL supports LLMs of type {sorted(LAL_ATTENTION_CLASSES)}, got {model_type!r}")
        for layer_idx in self.config.lal_layers:
            self.language_model.layers[layer_idx].self_attn = LAL_ATTENTION_CLASSES[model_type](
                self.config.text_config, layer_idx, kv_source=self.config.lal_kv_source
            )

    def train(self, mode: bool = True):
        """Frozen encoders stay in eval mode (no dropout, SpecAugment or layerdrop) even while the model trains."""
        super().train(mode)
        for tower in self.audio_towers:
            if not any(p.requires_grad for p in tower.parameters()):
                tower.eval()
        return self

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def _slot(self, encoder: int | str) -> int:
        names = [settings["name"] for settings in self.config.audio_encoders]
        if isinstance(encoder, str):
            if encoder not in names:
                raise ValueError(f"Unknown audio encoder {encoder!r}; this model has {names}")
            return names.index(encoder)
        if not 0 <= encoder < len(names):
            raise ValueError(f"Audio slot {encoder} out of range; this model has {len(names)} encoders")
        return encoder

    def get_audio_features(
        self,
        audio_features: torch.Tensor,
        audio_feature_mask: torch.Tensor | None = None,
        audio_window_clip: torch.LongTensor | None = None,
        encoder: int | str = 0,
    ) -> PalAudioFeatures:
        """
        Runs one encoder over the windows of a batch, so its output can be reused for many questions.

        Args:
            audio_features: `(batch, num_windows, *feature_shape)`, the processor's `audio_features_{k}`.
            audio_feature_mask: `(batch, num_windows, feature_length)`, the processor's `audio_feature_mask_{k}`.
            audio_window_clip: `(batch, num_windows)`, clip index per window (-1 = padding window). Defaults to every
                window belonging to clip 0.
            encoder: slot index or encoder name.
        """
        slot = self._slot(encoder)
        tower, settings = self.audio_towers[slot], self.config.audio_encoders[slot]
        adapter = audio_encoder_adapter(self.config.audio_configs[slot])
        check_window_shapes(slot, adapter, audio_features, audio_feature_mask, audio_window_clip)
        batch, num_windows = audio_features.shape[:2]
        if audio_window_clip is None:
            audio_window_clip = torch.zeros(batch, num_windows, dtype=torch.long, device=audio_features.device)
        present = audio_window_clip >= 0
        if not present.any():  # padding windows only (the text-only rows of a batch): no token to encode
            width = adapter.width(tower.config)
            hidden = torch.zeros(batch, num_windows, 0, width, dtype=self.language_model.dtype, device=tower.device)
            mask = torch.zeros(batch, num_windows, 0, dtype=torch.bool, device=tower.device)
            return PalAudioFeatures(last_hidden_state=hidden, audio_mask=mask, window_clip=audio_window_clip)
        features = audio_features[present].to(tower.device, tower.dtype)
        window_length = features.shape[adapter.frame_axis]
        lengths = (
            audio_feature_mask[present].sum(-1).to(tower.device)
            if audio_feature_mask is not None
            else torch.full((len(features),), window_length, device=tower.device)
        )
        with torch.set_grad_enabled(torch.is_grad_enabled() and any(p.requires_grad for p in tower.parameters())):
            tokens = adapter.encode(tower, features, lengths, settings["layer"])
        num_valid = num_encoder_tokens(tower.config, lengths, window_length)
        valid = torch.arange(tokens.shape[1], device=tokens.device) < num_valid[:, None]
        hidden = tokens.new_zeros(batch, num_windows, *tokens.shape[1:], dtype=self.language_model.dtype)
        mask = valid.new_zeros(batch, num_windows, valid.shape[1])
        hidden[present], mask[present] = tokens.to(hidden.dtype), valid
        return PalAudioFeatures(last_hidden_state=hidden, audio_mask=mask, window_clip=audio_window_clip)

    def encode_audio(self, **audio_inputs) -> dict[str, PalAudioFeatures]:
        """Runs every encoder whose `audio_features_{k}` is given; returns `{encoder name: PalAudioFeatures}`."""
        encoded = {}
        for slot, settings in enumerate(self.config.audio_encoders):
            features = audio_inputs.get(f"audio_features_{slot}")
            if features is not None:
                encoded[settings["name"]] = self.get_audio_features(
                    features,
                    audio_inputs.get(f"audio_feature_mask_{slot}"),
                    audio_inputs.get(f"audio_window_clip_{slot}"),
                    encoder=slot,
                )
        return encoded

    def _resolve_audio(self, audio_inputs: dict, audio_embeds, batch: int) -> dict[str, PalAudioFeatures]:
        """The encoded audio by encoder name, from `audio_*_{k}` inputs or precomputed `audio_embeds`."""
        self._check_audio_inputs(audio_inputs, audio_embeds)
        if audio_embeds is None:
            audio = self.encode_audio(**audio_inputs)
        else:
            if isinstance(audio_embeds, (list, tuple)):
                names = [settings["name"] for settings in self.config.audio_encoders]
                audio_embeds = dict(zip(names, audio_embeds))
            for name in audio_embeds:
                self._slot(name)
            audio = {  # as `get_audio_features` returns them; stored ones may be float32, with a 0/1 mask
                name: PalAudioFeatures(
                    last_hidden_state=value.last_hidden_state.to(self.language_model.dtype),
                    audio_mask=value.audio_mask.bool(),
                    window_clip=value.window_clip,
                )
                for name, value in audio_embeds.items()
                if value is not None
            }
        for name, features in audio.items():
            if features.last_hidden_state.shape[0] != batch:
                raise ValueError(
                    f"The audio of encoder {name!r} has batch size {features.last_hidden_state.shape[0]} but the text "
                    f"has {batch}: audio inputs are batch-major, one row per text sample"
                )
        return audio

    def _check_audio_inputs(self, audio_inputs: dict, audio_embeds) -> None:
        """Audio inputs of slots this model lacks, given beside `audio_embeds`, or extra `audio_embeds` are refused."""
        given = [name for name, value in audio_inputs.items() if value is not None]
        num_slots = len(self.config.audio_encoders)
        known = {f"{prefix}{k}" for prefix in AUDIO_INPUT_PREFIXES for k in range(num_slots)}
        unknown = sorted(set(given) - known)
        if unknown:
            raise ValueError(
                f"{', '.join(unknown)} given, but this model has {num_slots} audio encoder(s), in slots 0 to "
                f"{num_slots - 1}"
            )
        if given and audio_embeds is not None:
            raise ValueError(f"Pass either audio_embeds or the audio inputs {given}, not both")
        if isinstance(audio_embeds, (list, tuple)) and len(audio_embeds) > num_slots:
            raise ValueError(
                f"audio_embeds has {len(audio_embeds)} entries but this model has {num_slots} audio encoder(s)"
            )

    def _token_mask(self, input_ids, inputs_embeds, token_id: int | None) -> torch.Tensor:
        if token_id is None:
            return torch.zeros(inputs_embeds.shape[:2], dtype=torch.bool, device=inputs_embeds.device)
        if input_ids is not None:
            return input_ids == token_id
        token_embed = self.get_input_embeddings()(torch.tensor(token_id, device=inputs_embeds.device))
        return (inputs_embeds == token_embed).all(-1)

    def _plits_embeddings(self, audio: dict[str, PalAudioFeatures]) -> torch.Tensor | None:
        """
        All PLITS embeddings of the batch, ordered as the placeholders are: by sample, then clip, then encoder slot,
        then window and time. Returns `(num_placeholders_in_batch, hidden)` or `None` without PLITS audio.
        """
        pieces, keys = [], []
        for slot, settings in enumerate(self.config.audio_encoders):
            features = audio.get(settings["name"])
            if features is None or settings["name"] not in self.plits_projectors or not features.audio_mask.any():
                continue
            batch, num_windows, length, width = features.last_hidden_state.shape
            embeds, valid = self.plits_projectors[settings["name"]](
                features.last_hidden_state.reshape(-1, length, width), features.audio_mask.reshape(-1, length)
            )
            valid = valid & (features.window_clip.reshape(-1, 1) >= 0)
            sample = torch.arange(batch, device=valid.device).repeat_interleave(num_windows)
            key = (sample * MAX_CLIPS_PER_SAMPLE + features.window_clip.reshape(-1)) * MAX_SLOTS + slot
            pieces.append(embeds[valid])
            keys.append(key[:, None].expand_as(valid)[valid])
        if not pieces:
            return None
        embeds, keys = torch.cat(pieces), torch.cat(keys)
        return embeds[torch.argsort(keys, stable=True)]

    def _scatter_plits(self, inputs_embeds, placeholder_mask, plits_embeds) -> torch.Tensor:
        num_placeholders, num_embeds = int(placeholder_mask.sum()), 0 if plits_embeds is None else len(plits_embeds)
        if num_placeholders != num_embeds:
            raise ValueError(
                f"Audio features and audio placeholders do not match: {num_placeholders} placeholder tokens in the "
                f"text but the audio gives {num_embeds} PLITS embeddings"
            )
        if num_embeds == 0:
            return inputs_embeds
        mask = placeholder_mask[..., None].expand_as(inputs_embeds).to(inputs_embeds.device)
        return inputs_embeds.masked_scatter(mask, plits_embeds.to(inputs_embeds.device, inputs_embeds.dtype))

    def _lal_columns(self, audio: dict[str, PalAudioFeatures]):
        """Per LAL encoder: its tokens packed per sample `(B, Na_k, C_k)`, validity and clip index per column."""
        columns = []
        for settings in self.config.audio_encoders:
            if settings["name"] not in audio or settings["name"] not in self.lal_projectors:
                continue
            features = audio[settings["name"]]
            batch, num_windows, length, width = features.last_hidden_state.shape
            clip = features.window_clip[..., None].expand(-1, -1, length).reshape(batch, -1)
            valid = features.audio_mask.reshape(batch, -1) & (clip >= 0)
            tokens, packed_valid = _gather_columns(features.last_hidden_state.reshape(batch, -1, width), valid)
            packed_clip, _ = _gather_columns(clip, valid)
            columns.append((settings["name"], tokens, packed_valid, packed_clip))
        return columns

    def _lal_inputs(self, audio: dict[str, PalAudioFeatures], markers: torch.Tensor) -> PalLalInputs | None:
        columns = self._lal_columns(audio)
        valid = torch.cat([column[2] for column in columns], dim=1) if columns else None
        if valid is None or valid.shape[1] == 0:  # no audio column in the batch: plain attention
            return None
        clip = torch.cat([column[3] for column in columns], dim=1)
        states, norms = {}, {}
        for layer_idx in self.config.lal_layers:
            key = str(layer_idx) if self.config.lal_projector == "per_layer" else "shared"
            states[layer_idx] = torch.cat([self.lal_projectors[name][key](t) for name, t, _, _ in columns], dim=1)
            norms[layer_idx] = self.language_model.layers[layer_idx].input_layernorm
        visible = self._audio_visibility(markers, valid, clip)
        rope = None
        if self.config.lal_audio_rope:
            # each sample's own audio sits at -Na_b … -1 (its valid columns, in order), whatever the batch's widest
            positions = valid.long().cumsum(1) - 1 - valid.sum(1, keepdim=True)
            rope = self.language_model.rotary_emb(states[self.config.lal_layers[0]], positions)
        return PalLalInputs(states, norms, visible, valid, rope)

    def _check_markers(self, markers: torch.Tensor, audio: dict[str, PalAudioFeatures]) -> None:
        """
        One marker `(B, L)` per LAL clip and sample. Markers in a sample without any clip (audio inputs forgotten or
        misnamed) raise; so do clips without a marker under "causal" visibility, where the marker places the clip.
        """
        num_markers = markers.sum(1)
        num_clips = torch.zeros_like(num_markers)
        for name in self.lal_projectors:
            if name in audio and audio[name].window_clip.numel():
                clips = audio[name].window_clip.amax(dim=1).to(num_clips.device) + 1
                num_clips = torch.maximum(num_clips, clips)
        # not `num_markers > num_clips`: generating without a cache feeds the answer back, and it may hold a marker
        wrong = (num_markers > 0) & (num_clips == 0)
        if self.config.lal_audio_visibility == "causal":
            wrong |= num_markers < num_clips
        if wrong.any():
            sample = int(wrong.nonzero()[0])
            raise ValueError(
                f"Sample {sample} has {int(num_clips[sample])} LAL audio clips but {int(num_markers[sample])} "
                f"{self.config.audio_token} marker tokens; write one audio token per clip and pass the audio of each"
            )

    def _audio_visibility(self, markers: torch.Tensor, valid: torch.Tensor, clip: torch.Tensor) -> torch.Tensor:
        """
        `(B, Q, Na)` from the markers `(B, Q)` and the columns' validity and clip `(B, Na)`: under "causal"
        visibility a query sees a clip from that clip's marker token on.
        """
        visible = valid[:, None, :].expand(-1, markers.shape[1], -1)
        if self.config.lal_audio_visibility == "all":
            return visible
        # marker_rank[b, q] = how many markers are at or before position q = the clips position q may see
        marker_rank = markers.long().cumsum(dim=1)
        return visible & (clip[:, None, :] < marker_rank[:, :, None])

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        audio_embeds: dict | list | None = None,
        **kwargs,
    ) -> tuple | PalModelOutputWithPast:
        """
        Args:
            input_ids: `(batch, seq_len)` text with PLITS placeholders and one audio marker per LAL clip.
            audio_embeds: precomputed `PalAudioFeatures` by encoder name (or a list by slot) from
                `get_audio_features`, used instead of `audio_features_{k}`.
            kwargs: `audio_features_{k}`, `audio_feature_mask_{k}`, `audio_window_clip_{k}` for slots k = 0…3, and
                the usual Transformers kwargs (`output_attentions`, …).
        """
        audio_inputs = {name: kwargs.pop(name) for name in list(kwargs) if name.startswith(AUDIO_INPUT_PREFIXES)}
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        decoding = cache is not None and cache.get_seq_length() > 0
        if decoding and (audio_embeds is not None or any(value is not None for value in audio_inputs.values())):
            raise ValueError(
                f"Audio inputs were passed with a cache that already holds {cache.get_seq_length()} text positions, "
                "but PAL takes audio at prefill only (its LAL keys/values and PLITS embeddings are in the cache): "
                "to continue from a returned cache, pass the text without the audio inputs; for new audio, start "
                "from an empty cache"
            )
        audio = self._resolve_audio(audio_inputs, audio_embeds, inputs_embeds.shape[0])

        placeholder_mask = self._token_mask(input_ids, inputs_embeds, self.config.audio_placeholder_token_id)
        plits_embeds = self._plits_embeddings(audio)
        if plits_embeds is not None or (placeholder_mask.any() and not decoding):
            inputs_embeds = self._scatter_plits(inputs_embeds, placeholder_mask, plits_embeds)
        if self.config.uses_lal and not decoding:  # LAL audio enters at prefill only: decoding steps need no markers
            markers = self._token_mask(input_ids, inputs_embeds, self.config.audio_token_id)
            self._check_markers(markers, audio)
            lal_inputs = self._lal_inputs(audio, markers) if audio else None
            if lal_inputs is not None:
                kwargs["pal_lal"] = lal_inputs
        if position_ids is None:
            position_ids = _position_ids_from_mask(attention_mask, inputs_embeds.shape[1])

        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            **kwargs,
        )
        return PalModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            audio_hidden_states=plits_embeds,
        )


def _position_ids_from_mask(attention_mask: torch.Tensor | None, query_length: int) -> torch.LongTensor | None:
    """
    Positions that left padding does not shift, `(batch, query_length)`, as `generate` computes them: LAL audio keys
    carry no RoPE, so a text query's absolute position matters. `None` unless the mask is 2-D `(batch, past + query)`.
    """
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2:
        return None
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -query_length:]


class PalForConditionalGeneration(PalPreTrainedModel, GenerationMixin):
    """PAL with a language-modelling head: `model` (a `PalModel`) and `lm_head`."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: PalConfig):
        super().__init__(config)
        self.model = PalModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()
        self._suppress_audio_tokens()

    def _suppress_audio_tokens(self) -> None:
        """PAL's special tokens are never generated."""
        special = {config_id for config_id in (self.config.audio_token_id, self.config.audio_placeholder_token_id)}
        special.discard(None)
        if self.generation_config is not None and special:
            suppressed = set(self.generation_config.suppress_tokens or []) | special
            self.generation_config.suppress_tokens = sorted(suppressed)

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def get_audio_features(self, *args, **kwargs) -> PalAudioFeatures:
        """See `PalModel.get_audio_features`."""
        return self.model.get_audio_features(*args, **kwargs)

    def encode_audio(self, **audio_inputs) -> dict[str, PalAudioFeatures]:
        """See `PalModel.encode_audio`."""
        return self.model.encode_audio(**audio_inputs)

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        audio_features_0: torch.FloatTensor | None = None,
        audio_feature_mask_0: torch.LongTensor | None = None,
        audio_window_clip_0: torch.LongTensor | None = None,
        audio_features_1: torch.FloatTensor | None = None,
        audio_feature_mask_1: torch.LongTensor | None = None,
        audio_window_clip_1: torch.LongTensor | None = None,
        audio_features_2: torch.FloatTensor | None = None,
        audio_feature_mask_2: torch.LongTensor | None = None,
        audio_window_clip_2: torch.LongTensor | None = None,
        audio_features_3: torch.FloatTensor | None = None,
        audio_feature_mask_3: torch.LongTensor | None = None,
        audio_window_clip_3: torch.LongTensor | None = None,
        audio_embeds: dict | list | None = None,
        **kwargs,
    ) -> tuple | PalCausalLMOutputWithPast:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch, seq_len)`):
                Text tokens with PLITS placeholders and one audio marker per clip for LAL (from `PalProcessor`).
            audio_features_{k} (`torch.FloatTensor` of shape `(batch, num_windows, *feature_shape)`):
                Encoder k's input per window (mel features, or waveforms for waveform encoders), text batch first.
            audio_feature_mask_{k} (`torch.LongTensor` of shape `(batch, num_windows, feature_length)`):
                Which feature frames are real audio, for encoders that have such a mask.
            audio_window_clip_{k} (`torch.LongTensor` of shape `(batch, num_windows)`):
                Clip index of each window within its sample, -1 for padding windows.
            audio_embeds (`dict[str, PalAudioFeatures]` or list by slot, *optional*):
                Precomputed encoder outputs from `get_audio_features`, instead of the features.
            labels (`torch.LongTensor` of shape `(batch, seq_len)`, *optional*):
                Next-token labels (-100 = ignored); shifted inside the loss.
            logits_to_keep (`int` or `torch.Tensor`, *optional*):
                Compute logits only for the last `logits_to_keep` positions (or these indices).
        """
        audio_inputs = {
            f"{prefix}{k}": value
            for k, values in enumerate(
                (
                    (audio_features_0, audio_feature_mask_0, audio_window_clip_0),
                    (audio_features_1, audio_feature_mask_1, audio_window_clip_1),
                    (audio_features_2, audio_feature_mask_2, audio_window_clip_2),
                    (audio_features_3, audio_feature_mask_3, audio_window_clip_3),
                )
            )
            for prefix, value in zip(AUDIO_INPUT_PREFIXES, values)
            if value is not None
        }
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            audio_embeds=audio_embeds,
            return_dict=True,
            **audio_inputs,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, slice_indices, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        return PalCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            audio_hidden_states=outputs.audio_hidden_states,
        )

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        next_sequence_length: int | None = None,
        cache: Cache | None = None,
        attention_mask: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        is_first_iteration: bool | None = False,
        **kwargs,
    ) -> dict:
        """
        Audio inputs reach `forward` only at prefill (every step when `use_cache=False`): the LAL K/V are cached. An
        assistant model's calls all count as later iterations, so an empty cache also marks a prefill.
        """
        model_inputs = super().prepare_inputs_for_generation(
            input_ids,
            next_sequence_length=next_sequence_length,
            cache=cache,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            is_first_iteration=is_first_iteration,
            **kwargs,
        )
        prefill = is_first_iteration or cache is None or cache.get_seq_length() == 0
        if not prefill and kwargs.get("use_cache", True):
            for name in AUDIO_INPUT_NAMES:
                model_inputs.pop(name, None)
        return model_inputs

    def _expand_inputs_for_generation(
        self,
        expand_size: int = 1,
        is_encoder_decoder: bool = False,
        input_ids: torch.LongTensor | None = None,
        **model_kwargs,
    ) -> tuple[torch.LongTensor | None, dict]:
        """Also repeats precomputed `audio_embeds` for beams and `num_return_sequences` (not plain tensors)."""
        audio_embeds = model_kwargs.pop("audio_embeds", None)
        input_ids, model_kwargs = super()._expand_inputs_for_generation(
            expand_size, is_encoder_decoder, input_ids, **model_kwargs
        )
        if audio_embeds is not None:
            model_kwargs["audio_embeds"] = repeat_audio_embeds(audio_embeds, expand_size)
        return input_ids, model_kwargs

    def _prefill(self, input_ids: torch.LongTensor, generation_config: GenerationConfig, model_kwargs: dict, **kwargs):
        """Chunked prefill cannot split PAL's audio inputs (Transformers refuses it for its multimodal inputs too)."""
        audio_names = [name for name in AUDIO_INPUT_NAMES if model_kwargs.get(name) is not None]
        chunk_size = generation_config.prefill_chunk_size
        if audio_names and chunk_size is not None and input_ids.shape[1] > chunk_size:
            raise ValueError(
                f"Chunked prefill cannot split the audio inputs {audio_names} into chunks of {chunk_size} tokens "
                f"(the prompt has {input_ids.shape[1]}): pass `prefill_chunk_size=None`"
            )
        return super()._prefill(input_ids, generation_config, model_kwargs, **kwargs)

    @classmethod
    def from_components(
        cls,
        text_model: str,
        audio_encoders: dict[str, str],
        integration: str | dict[str, str] = "pal",
        audio_encoder_settings: dict[str, dict] | None = None,
        dtype: torch.dtype | str | None = None,
        attn_implementation: str | None = None,
        device_map: str | dict | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
        output_loading_info: bool = False,
        **config_overrides,
    ):
        """
        Composes a PAL model from a pretrained LLM and pretrained audio encoders (local paths or Hub ids).

        Args:
            text_model: a `llama`, `qwen2`, `qwen3` or `mistral` causal-LM checkpoint (with its tokenizer).
            audio_encoders: `{name: checkpoint}` in slot order (at most four), e.g. a full Whisper checkpoint.
            integration: `"plits"`, `"lal"`, `"hybrid"`, `"pal"` (Whisper-family → PLITS, others → LAL) or a
                per-encoder dict.
            audio_encoder_settings: per encoder name: `integration`, `projector`, `downsample`, `layer`, and the
                loading options `dtype`, `attn_implementation`, `device_map`, `revision` for that encoder.
            dtype, revision, trust_remote_code: passed to every component's `from_pretrained` (an encoder's own
                settings win); `device_map` places the composed model.
            attn_implementation: for the LLM and, where they support it, the encoders (else eager: CLAP has no SDPA).
            output_loading_info: also return `{"new_modules": [...], "added_tokens": [...]}`.
            config_overrides: any `PalConfig` field, e.g. `lal_start_layer=4` or `lal_layers=[...]`.
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not 1 <= len(audio_encoders) <= MAX_SLOTS:
            raise ValueError(f"PAL takes 1 to {MAX_SLOTS} audio encoders, got {len(audio_encoders)}")
        check_component_options(audio_encoders, audio_encoder_settings or {}, config_overrides)
        shared = {"revision": revision, "trust_remote_code": trust_remote_code}
        tokenizer = AutoTokenizer.from_pretrained(text_model, **shared)
        llm = AutoModelForCausalLM.from_pretrained(
            text_model, dtype=dtype, attn_implementation=attn_implementation, **shared
        )
        settings = {name: (audio_encoder_settings or {}).get(name, {}) for name in audio_encoders}
        encoders = {
            name: load_audio_encoder(path, **{**shared, "dtype": dtype, **_loading_options(settings[name])})
            for name, path in audio_encoders.items()
        }
        integrations = resolve_integrations(
            integration, {name: enc.config.model_type for name, enc in encoders.items()}
        )
        added_tokens = reserve_audio_tokens(tokenizer, config_overrides)
        config = PalConfig(
            text_config=llm.config,
            **{f"audio_config_{k}": encoder.config for k, encoder in enumerate(encoders.values())},
            audio_encoders=[
                {"name": name, "integration": integrations[name], **_architecture_options(settings[name])}
                for name in encoders
            ],
            **config_overrides,
        )
        model = cls(config).to(llm.dtype)
        new_modules = model._load_components(llm, list(encoders.values()), len(tokenizer))
        model.generation_config = copy_generation_config(llm, model.config)
        attention = [settings[name].get("attn_implementation", attn_implementation) for name in encoders]
        if attn_implementation is not None or any(attention):
            model.set_attn_implementation(
                _attention_per_submodel(model.model.audio_towers, attn_implementation, attention)
            )
        logger.warning(
            f"PAL composed from {text_model}; newly initialised modules: {', '.join(new_modules) or 'none'}"
        )
        if device_map is not None:
            model = _place_model(model, device_map)
        if output_loading_info:
            return model, {"new_modules": new_modules, "added_tokens": added_tokens}
        return model

    def _load_components(self, llm: PreTrainedModel, encoders: list[nn.Module], vocab_size: int) -> list[str]:
        """Copies the pretrained weights in; returns the names of the modules that stay newly initialised."""
        result = self.model.language_model.load_state_dict(llm.get_decoder().state_dict(), strict=False)
        if result.unexpected_keys:
            raise ValueError(f"Unexpected LLM weights: {result.unexpected_keys}")
        if not self.config.tie_word_embeddings:
            self.lm_head.load_state_dict(llm.get_output_embeddings().state_dict())
        for tower, encoder in zip(self.model.audio_towers, encoders):
            tower.load_state_dict(encoder.state_dict())
            tower.to(encoder.dtype)
        self.model.init_separate_audio_projections()
        if vocab_size != self.config.text_config.vocab_size:
            self.resize_token_embeddings(vocab_size)
        self.tie_weights()
        return [f"model.plits_projectors.{name}" for name in self.model.plits_projectors] + [
            f"model.lal_projectors.{name}" for name in self.model.lal_projectors
        ]


def repeat_audio_embeds(audio_embeds: dict | list, repeats: int) -> dict | list:
    """Each `PalAudioFeatures` of `audio_embeds` (by name or by slot) with its batch rows repeated `repeats` times."""

    def repeat(features: PalAudioFeatures | None) -> PalAudioFeatures | None:
        if features is None or repeats == 1:
            return features
        return PalAudioFeatures(**{key: value.repeat_interleave(repeats, dim=0) for key, value in features.items()})

    if isinstance(audio_embeds, dict):
        return {name: repeat(features) for name, features in audio_embeds.items()}
    return [repeat(features) for features in audio_embeds]


def check_component_options(
    audio_encoders: dict[str, str], audio_encoder_settings: dict[str, dict], config_overrides: dict
) -> None:
    """
    `from_components`' per-encoder settings must name its encoders and known keys, and its other keywords must be
    `PalConfig` fields: anything else would be silently ignored.
    """
    unknown = sorted(set(config_overrides) - {config_field.name for config_field in fields(PalConfig)})
    if unknown:
        raise ValueError(
            f"from_components got unknown keyword arguments {unknown}; its other keywords are PalConfig fields"
        )
    unknown_names = sorted(set(audio_encoder_settings) - set(audio_encoders))
    if unknown_names:
        raise ValueError(
            f"audio_encoder_settings names encoders {unknown_names} not in audio_encoders {list(audio_encoders)}"
        )
    known = (*ENCODER_LOADING_OPTIONS, "attn_implementation", *ENCODER_ARCHITECTURE_OPTIONS)
    for name, settings in audio_encoder_settings.items():
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise ValueError(f"audio_encoder_settings[{name!r}] has unknown keys {unknown}; known: {known}")


def _loading_options(settings: dict) -> dict:
    return {key: settings[key] for key in ENCODER_LOADING_OPTIONS if key in settings}


def _architecture_options(settings: dict) -> dict:
    return {key: settings[key] for key in ENCODER_ARCHITECTURE_OPTIONS if key in settings}


def load_audio_encoder(path: str, **kwargs) -> nn.Module:
    """
    Loads the audio encoder of a checkpoint: Whisper's encoder from a full Whisper model, CLAP's audio tower from a
    full `ClapModel` (whose config nests it as `audio_config`), the base model of AST or wav2vec2-family checkpoints
    (classification and CTC heads are dropped). `kwargs` go to `from_pretrained`; unknown types raise a `ValueError`.
    """
    config = AutoConfig.from_pretrained(
        path, revision=kwargs.get("revision"), trust_remote_code=kwargs.get("trust_remote_code", False)
    )
    return audio_encoder_adapter(getattr(config, "audio_config", config)).load(path, **kwargs)


def resolve_integrations(integration: str | dict[str, str], model_types: dict[str, str]) -> dict[str, str]:
    """Integration per encoder name; `"pal"` routes Whisper-family encoders to PLITS and the others to LAL."""
    if isinstance(integration, dict):
        missing = set(model_types) - set(integration)
        if missing:
            raise ValueError(f"integration dict has no entry for encoders {sorted(missing)}")
        return {name: integration[name] for name in model_types}
    if integration == "pal":
        if len(model_types) == 1:
            raise ValueError(
                'integration="pal" routes several encoders; for a single encoder use integration="hybrid"'
            )
        return {name: "plits" if model_type in WHISPER_FAMILY else "lal" for name, model_type in model_types.items()}
    if integration not in ("plits", "lal", "hybrid"):
        raise ValueError(f'integration must be "plits", "lal", "pal", "hybrid" or a dict, got {integration!r}')
    return dict.fromkeys(model_types, integration)


def reserve_audio_tokens(tokenizer, config_overrides: dict) -> list[str]:
    """
    Picks PAL's audio token and placeholder token: two reserved special tokens where the vocabulary has them
    (Llama-3's `<|reserved_special_token_N|>`, the last two), else new special tokens added to the tokenizer.
    Writes strings and ids into `config_overrides`; returns the tokens that had to be added.
    """
    reserved = sorted(
        (token for token in tokenizer.get_vocab() if token.startswith(RESERVED_TOKEN_PREFIX)),
        key=lambda token: int("".join(ch for ch in token if ch.isdigit()) or 0),
    )
    if len(reserved) >= 2:
        audio_token, placeholder_token = reserved[-2], reserved[-1]
    else:
        audio_token, placeholder_token = PalConfig.audio_token, PalConfig.audio_placeholder_token
    audio_token = config_overrides.setdefault("audio_token", audio_token)
    placeholder_token = config_overrides.setdefault("audio_placeholder_token", placeholder_token)
    added = [token for token in (audio_token, placeholder_token) if token not in tokenizer.get_vocab()]
    tokenizer.add_special_tokens({"additional_special_tokens": added}, replace_extra_special_tokens=False)
    config_overrides["audio_token_id"] = tokenizer.convert_tokens_to_ids(audio_token)
    config_overrides["audio_placeholder_token_id"] = tokenizer.convert_tokens_to_ids(placeholder_token)
    return added


def copy_generation_config(llm: PreTrainedModel, config: PalConfig):
    """The LLM's own generation config (stop tokens included) with PAL's special tokens suppressed."""
    generation_config = llm.generation_config.__class__.from_dict(llm.generation_config.to_dict())
    suppressed = set(generation_config.suppress_tokens or []) | {
        config.audio_token_id,
        config.audio_placeholder_token_id,
    }
    generation_config.suppress_tokens = sorted(suppressed)
    return generation_config


def _attention_per_submodel(
    towers: nn.ModuleList, attn_implementation: str | None, per_encoder: list[str | None]
) -> dict[str, str]:
    """
    The LLM gets `attn_implementation`; encoder k gets `per_encoder[k]` where it supports it, else eager (CLAP has no
    SDPA). `None` keeps the current choice.
    """
    choice = {"": attn_implementation, "text_config": attn_implementation} if attn_implementation else {}
    for k, (tower, requested) in enumerate(zip(towers, per_encoder)):
        if requested is not None:
            choice[f"audio_config_{k}"] = requested if supports_attention(tower, requested) else "eager"
    return choice


def _place_model(model: nn.Module, device_map: str | dict | torch.device) -> nn.Module:
    if isinstance(device_map, (str, torch.device)) and device_map != "auto":
        return model.to(device_map)
    try:  # optional: Transformers' remote-code import check skips imports inside try blocks
        from accelerate import dispatch_model, infer_auto_device_map
    except ImportError as error:
        raise ImportError(f"device_map={device_map!r} needs `accelerate`: pip install accelerate") from error

    if device_map == "auto":
        device_map = infer_auto_device_map(model, no_split_module_classes=model._no_split_modules)
    return dispatch_model(model, device_map=device_map)


PalConfig.register_for_auto_class()
PalModel.register_for_auto_class("AutoModel")
PalForConditionalGeneration.register_for_auto_class("AutoModelForMultimodalLM")

__all__ = ["PalPreTrainedModel", "PalModel", "PalForConditionalGeneration", "PalAudioFeatures"]
