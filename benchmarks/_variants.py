"""
Shapes and variants of the efficiency benchmark: each variant builds its (random-init) model and hand-made inputs with
an exact number Na of audio tokens (PLITS) or audio K/V columns (LAL) per sample and exactly Nt text positions.

Layout of one sample (all samples of a batch are identical, so there is no padding):
`4 text tokens | PLITS placeholders (all PLITS encoders) | LAL marker (if any encoder uses LAL) | text …`, where the
marker counts as one of the Nt text positions. Labels cover the text positions only.
"""

from __future__ import annotations

import torch

VARIANTS = ("text", "plits", "lal", "pal", "pal_plits", "hybrid", "qwen2audio")
VARIANT_HELP = {
    "text": "bare LLM (LlamaForCausalLM), text only",
    "plits": "PAL, one Whisper encoder via PLITS (stack 4 + 2-layer MLP)",
    "lal": "PAL, one Whisper encoder via LAL (per-layer Linear, every 50 Hz frame)",
    "pal": "PAL ensemble: Whisper via PLITS (Na_w tokens) + CLAP via LAL (Na_c columns), Na_w + Na_c = Na",
    "pal_plits": "the same two encoders, both via PLITS (Na_w + Na_c tokens): PAL's all-PLITS reference",
    "hybrid": "PAL hybrid, one Whisper encoder: Q-Former summaries via PLITS + the full sequence via LAL",
    "qwen2audio": "Transformers' Qwen2AudioForConditionalGeneration (external PLITS reference), same LLM and encoder",
}
PREFIX_TOKENS = 4

LLAMA_3_2_1B = dict(
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=64,
    vocab_size=128256,
    max_position_embeddings=131072,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    rope_parameters={
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
)
WHISPER_LARGE_V3_ENCODER = dict(
    d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120, num_mel_bins=128,
    max_source_positions=1500,
)  # fmt: skip

SHAPES = {
    # CPU shapes: an 8-layer, 512-wide Llama-shaped LLM (4 KV heads of 8), whisper-tiny-sized encoder with 10 s windows
    "cpu": {
        "llm": dict(
            hidden_size=512, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4,
            vocab_size=16384, max_position_embeddings=32768, tie_word_embeddings=True,
        ),
        "lal_start_layer": 2,
        "whisper": dict(
            d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536, num_mel_bins=80,
            max_source_positions=500,
        ),
        "clap": dict(
            patch_embeds_hidden_size=48, hidden_size=384, depths=[1, 1, 2, 1], num_attention_heads=[2, 2, 4, 8],
            spec_size=256, num_mel_bins=64,
        ),
    },
    # the paper's sizes (random init): Llama-3.2-1B, Whisper-large-v3 encoder, CLAP HTSAT (laion/clap-htsat-unfused)
    "paper": {
        "llm": LLAMA_3_2_1B,
        "lal_start_layer": 4,
        "whisper": WHISPER_LARGE_V3_ENCODER,
        "clap": {},
    },
    # tiny sizes for the test suite
    "smoke": {
        "llm": dict(
            hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=512, max_position_embeddings=4096, tie_word_embeddings=True,
        ),
        "lal_start_layer": 1,
        "num_summary_tokens": 4,
        "whisper": dict(
            d_model=32, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64, num_mel_bins=16,
            max_source_positions=40,
        ),
        "clap": dict(
            patch_embeds_hidden_size=8, hidden_size=64, depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 2, 2],
            spec_size=256, num_mel_bins=64,
        ),
    },
}  # fmt: skip


class Unavailable(Exception):
    """This variant cannot be measured here; the message says why (never replaced by made-up numbers)."""


# ----------------------------------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------------------------------


def llama_config(shape: dict):
    from transformers import LlamaConfig

    return LlamaConfig(**shape["llm"], bos_token_id=1, eos_token_id=2, pad_token_id=0, attention_dropout=0.0)


def whisper_config(shape: dict):
    from transformers import WhisperConfig

    return WhisperConfig(
        **shape["whisper"], decoder_layers=1, decoder_attention_heads=shape["whisper"]["encoder_attention_heads"],
        decoder_ffn_dim=64, vocab_size=64, max_target_positions=16, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=1, suppress_tokens=None, begin_suppress_tokens=None,
    )  # fmt: skip


def clap_config(shape: dict):
    from transformers import ClapAudioConfig

    return ClapAudioConfig(**shape["clap"])


def special_ids(shape: dict) -> tuple[int, int]:
    """(audio marker id, PLITS placeholder id): the last two ids of the vocabulary."""
    vocab = shape["llm"]["vocab_size"]
    return vocab - 2, vocab - 1


# ----------------------------------------------------------------------------------------------------------------------
# Token layouts: which windows hold how many valid encoder tokens, so that PLITS tokens / LAL columns are exact
# ----------------------------------------------------------------------------------------------------------------------


def fill_windows(total: int, per_window: int) -> list[int]:
    """`total` items in windows of `per_window`: full windows, then the remainder."""
    if total <= 0:
        return []
    full, rest = divmod(total, per_window)
    return [per_window] * full + ([rest] if rest else [])


def plits_route(name: str, kind: str, tokens: int, window_tokens: int, width: int, downsample: int, projector: str):
    """PLITS with frame stacking: window w gives ceil(valid_w / downsample) embeddings."""
    cap = -(-window_tokens // downsample)
    plits = fill_windows(tokens, cap)
    valid = [min(window_tokens, p * downsample) for p in plits]
    assert sum(-(-v // downsample) for v in valid) == tokens
    return dict(
        name=name, kind=kind, integration="plits", projector=projector, downsample=downsample, width=width,
        window_tokens=window_tokens, windows=len(valid), valid=valid, plits=tokens, lal=0,
    )  # fmt: skip


def lal_route(name: str, kind: str, columns: int, window_tokens: int, width: int):
    valid = fill_windows(columns, window_tokens)
    return dict(
        name=name, kind=kind, integration="lal", projector="linear", downsample=1, width=width,
        window_tokens=window_tokens, windows=len(valid), valid=valid, plits=0, lal=columns,
    )  # fmt: skip


def hybrid_route(name: str, kind: str, na: int, window_tokens: int, width: int, queries: int, depth: int):
    """Na = queries · W (summaries, PLITS) + valid tokens (LAL columns), spread evenly over the fewest W windows."""
    windows = max(1, -(-na // (window_tokens + queries)))
    columns = na - queries * windows
    if columns < windows:
        raise Unavailable(f"hybrid: Na={na} cannot be split into {queries} summaries per window + LAL columns")
    base, extra = divmod(columns, windows)
    valid = [base + (1 if w < extra else 0) for w in range(windows)]
    return dict(
        name=name, kind=kind, integration="hybrid", projector="qformer", downsample=1, width=width,
        window_tokens=window_tokens, windows=windows, valid=valid, plits=queries * windows, lal=columns,
        queries=queries, depth=depth,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------------
# Benchmarked models
# ----------------------------------------------------------------------------------------------------------------------


def random_text(batch: int, length: int, vocab: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(3, vocab - 3, (batch, length), generator=generator)


def instantiate(from_config, config, device, dtype, **kwargs) -> torch.nn.Module:
    """
    A random-init model from `from_config(config, dtype=dtype, **kwargs)`, its parameters created and initialised on
    `device` in `dtype`: at the paper's shapes (~2 B parameters) a CPU initialisation in float32 and a copy would
    take ~30 s and twice the memory per point.
    """
    with torch.device(device):
        return from_config(config, dtype=dtype, **kwargs)


class Bench:
    """One variant at one point: the model, its inputs, and closures the worker times."""

    name: str
    model: torch.nn.Module
    layout: dict

    def llm_loss(self) -> torch.Tensor:
        """Forward with labels, encoder outputs precomputed."""
        raise NotImplementedError

    def e2e_loss(self) -> torch.Tensor:
        """Forward with labels, the frozen encoder included."""
        raise NotImplementedError

    def encoder_forward(self) -> None:
        """Only the frozen encoder(s), as they run inside the end-to-end step."""

    def generate(self, e2e: bool, **kwargs):
        raise NotImplementedError

    def audio_positions(self) -> list[int]:
        """Prompt positions whose K/V belong to audio (PLITS placeholders)."""
        return []


class TextBench(Bench):
    def __init__(self, shape, na, batch, nt, device, dtype, generator):
        from transformers import AutoModelForCausalLM

        self.name = "text"
        config = llama_config(shape)
        self.model = instantiate(AutoModelForCausalLM.from_config, config, device, dtype, attn_implementation="sdpa")
        self.input_ids = random_text(batch, nt, config.vocab_size, generator).to(device)
        self.attention_mask = torch.ones_like(self.input_ids)
        self.layout = {"seq_len": nt, "plits_tokens": 0, "lal_columns": 0, "num_lal_layers": 0, "routes": []}

    def llm_loss(self):
        return self.model(input_ids=self.input_ids, attention_mask=self.attention_mask, labels=self.input_ids).loss

    e2e_loss = llm_loss

    def generate(self, e2e, **kwargs):
        return self.model.generate(input_ids=self.input_ids, attention_mask=self.attention_mask, **kwargs)


PAL_ROUTING = {
    "plits": [("whisper", "plits")],
    "lal": [("whisper", "lal")],
    "pal": [("whisper", "plits"), ("clap", "lal")],
    "pal_plits": [("whisper", "plits"), ("clap", "plits")],
    "hybrid": [("whisper", "hybrid")],
}


def feature_spec(config) -> tuple[tuple[int, ...], int]:
    """Raw encoder input of one window as the processor makes it: (feature shape, frames along the mask axis)."""
    if config.model_type == "whisper":
        frames = 2 * config.max_source_positions
        return (config.num_mel_bins, frames), frames
    if config.model_type == "clap_audio_model":
        from transformers import ClapFeatureExtractor

        extractor = ClapFeatureExtractor(feature_size=config.num_mel_bins)
        frames = extractor.nb_max_samples // extractor.hop_length + 1  # 1001 for 10 s at 48 kHz
        return (1, frames, config.num_mel_bins), frames
    raise Unavailable(f"no raw-feature recipe for encoder type {config.model_type!r} in this benchmark")


def tokens_from_frames(config, frames: int, window_frames: int) -> int:
    from modeling_pal.configuration_pal import num_encoder_tokens

    try:
        return int(num_encoder_tokens(config, frames, window_frames))
    except TypeError:  # older signature without the window length
        return int(num_encoder_tokens(config, frames))


def frames_for_tokens(config, tokens: int, window_frames: int) -> int:
    """The fewest valid frames of a window that give exactly `tokens` valid encoder tokens."""
    low, high = 0, window_frames
    while low < high:
        mid = (low + high) // 2
        if tokens_from_frames(config, mid, window_frames) >= tokens:
            high = mid
        else:
            low = mid + 1
    if tokens_from_frames(config, low, window_frames) != tokens:
        raise RuntimeError(f"{config.model_type}: no frame count gives exactly {tokens} tokens per window")
    return low


class PalBench(Bench):
    def __init__(self, variant, shape, na, batch, nt, device, dtype, generator, pal_lal_fraction):
        from modeling_pal import PalConfig, PalForConditionalGeneration
        from modeling_pal.modeling_pal import audio_encoder_adapter

        self.name, self.batch, self.nt, self.device, self.dtype = variant, batch, nt, device, dtype
        marker_id, placeholder_id = special_ids(shape)
        routing = PAL_ROUTING[variant]
        kinds = [kind for kind, _ in routing]
        audio_configs = {kind: {"whisper": whisper_config, "clap": clap_config}[kind](shape) for kind in kinds}
        for kind, audio_config in audio_configs.items():
            try:
                audio_encoder_adapter(audio_config)
            except ValueError as error:
                raise Unavailable(f"{kind} encoder not supported by modeling_pal yet: {error}") from None
        config = PalConfig(
            text_config=llama_config(shape),
            **{f"audio_config_{k}": audio_configs[kind] for k, kind in enumerate(kinds)},
            audio_encoders=[{"name": kind, "integration": integration} for kind, integration in routing],
            lal_start_layer=shape["lal_start_layer"] if any(i != "plits" for _, i in routing) else None,
            audio_token_id=marker_id,
            audio_placeholder_token_id=placeholder_id,
            num_summary_tokens=shape.get("num_summary_tokens", 32),
        )
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        self.model = instantiate(PalForConditionalGeneration._from_config, config, device, dtype)
        self.config = config

        counts = self._split(variant, na, pal_lal_fraction)
        self.routes, self.feature_specs = [], []
        for slot, ((kind, integration), settings) in enumerate(zip(routing, config.audio_encoders)):
            window_tokens, width, spec = self._geometry(slot)
            self.feature_specs.append(spec)
            if integration == "plits":
                route = plits_route(
                    kind, kind, counts[kind], window_tokens, width, settings["downsample"], settings["projector"]
                )
            elif integration == "lal":
                route = lal_route(kind, kind, counts[kind], window_tokens, width)
            else:
                route = hybrid_route(
                    kind, kind, na, window_tokens, width, config.num_summary_tokens, config.qformer_num_layers
                )
            self.routes.append(route)

        plits_total = sum(route["plits"] for route in self.routes)
        has_lal = config.uses_lal
        text_after = nt - PREFIX_TOKENS - (1 if has_lal else 0)
        if text_after < 1:
            raise Unavailable(f"Nt={nt} is too short for the layout")
        pieces = [
            random_text(batch, PREFIX_TOKENS, config.text_config.vocab_size, generator),
            torch.full((batch, plits_total), placeholder_id),
            torch.full((batch, 1 if has_lal else 0), marker_id),
            random_text(batch, text_after, config.text_config.vocab_size, generator),
        ]
        self.input_ids = torch.cat(pieces, dim=1).to(device)
        self.attention_mask = torch.ones_like(self.input_ids)
        self.labels = self.input_ids.masked_fill(
            (self.input_ids == placeholder_id) | (self.input_ids == marker_id), -100
        )
        self.placeholder_positions = list(range(PREFIX_TOKENS, PREFIX_TOKENS + plits_total))
        self.audio_embeds, self.features = {}, {}
        for slot, route in enumerate(self.routes):
            self.audio_embeds[route["name"]] = self._embeds(route, generator)
            self.features.update(self._raw_features(slot, route, generator))
        self.layout = {
            "seq_len": self.input_ids.shape[1],
            "plits_tokens": plits_total,
            "lal_columns": sum(route["lal"] for route in self.routes),
            "num_lal_layers": len(config.lal_layers),
            "lal_layers": list(config.lal_layers),
            "routes": self.routes,
        }
        self.verified = False

    @staticmethod
    def _split(variant: str, na: int, fraction: float) -> dict:
        if variant in ("pal", "pal_plits"):
            clap = int(round(na * fraction))
            return {"whisper": na - clap, "clap": clap}
        return {"whisper": na}

    def _geometry(self, slot: int) -> tuple[int, int, tuple]:
        """(tokens per window, width) of encoder `slot`, read off one dummy window through `get_audio_features`."""
        audio_config = self.config.audio_configs[slot]
        shape, frames = feature_spec(audio_config)
        dummy = torch.zeros(1, 1, *shape, device=self.device, dtype=self.dtype)
        mask = torch.ones(1, 1, frames, dtype=torch.long, device=self.device)
        with torch.no_grad():
            out = self.model.get_audio_features(dummy, mask, encoder=slot)
        window_tokens, width = out.last_hidden_state.shape[2:]
        return int(window_tokens), int(width), (shape, frames)

    def _embeds(self, route: dict, generator: torch.Generator):
        """Precomputed encoder output with exactly the route's valid tokens per window."""
        from modeling_pal import PalAudioFeatures

        batch, windows, tokens, width = self.batch, route["windows"], route["window_tokens"], route["width"]
        valid = torch.zeros(windows, tokens, dtype=torch.bool)
        for w, count in enumerate(route["valid"]):
            valid[w, :count] = True
        valid = valid[None].expand(batch, -1, -1).contiguous()
        hidden = torch.randn(batch, windows, tokens, width, generator=generator) * valid[..., None]
        return PalAudioFeatures(
            last_hidden_state=hidden.to(self.device, self.dtype),
            audio_mask=valid.to(self.device),
            window_clip=torch.zeros(batch, windows, dtype=torch.long, device=self.device),
        )

    def _raw_features(self, slot: int, route: dict, generator: torch.Generator) -> dict:
        """Encoder inputs (random features, frame masks) whose valid frames give exactly the route's tokens."""
        audio_config = self.config.audio_configs[slot]
        shape, frames = self.feature_specs[slot]
        batch, windows = self.batch, route["windows"]
        features = torch.randn(batch, windows, *shape, generator=generator)
        mask = torch.zeros(batch, windows, frames, dtype=torch.long)
        for w, count in enumerate(route["valid"]):
            valid_frames = frames_for_tokens(audio_config, count, frames)
            mask[:, w, :valid_frames] = 1
            if audio_config.model_type == "clap_audio_model":  # CLAP windows are zero-padded
                features[:, w, :, valid_frames:] = 0
        route["valid_frames"] = [int(mask[0, w].sum()) for w in range(windows)]
        return {
            f"audio_features_{slot}": features.to(self.device, self.dtype),
            f"audio_feature_mask_{slot}": mask.to(self.device),
            f"audio_window_clip_{slot}": torch.zeros(batch, windows, dtype=torch.long, device=self.device),
        }

    def llm_loss(self):
        return self.model(
            input_ids=self.input_ids, attention_mask=self.attention_mask, audio_embeds=self.audio_embeds,
            labels=self.labels,
        ).loss  # fmt: skip

    def e2e_loss(self):
        return self.model(
            input_ids=self.input_ids, attention_mask=self.attention_mask, labels=self.labels, **self.features
        ).loss

    def encoder_forward(self):
        with torch.no_grad():
            encoded = self.model.encode_audio(**self.features)
        if not self.verified:  # the raw inputs must give exactly the precomputed layout
            for route in self.routes:
                got = encoded[route["name"]].audio_mask[0].sum(-1).tolist()
                if got != route["valid"]:
                    raise RuntimeError(
                        f"{route['name']}: raw features give {got} valid tokens, expected {route['valid']}"
                    )
            self.verified = True

    def generate(self, e2e, **kwargs):
        audio = self.features if e2e else {"audio_embeds": self.audio_embeds}
        return self.model.generate(input_ids=self.input_ids, attention_mask=self.attention_mask, **audio, **kwargs)

    def audio_positions(self):
        return self.placeholder_positions


class Qwen2AudioBench(Bench):
    """
    Transformers' Qwen2-Audio with the same LLM (a Llama text config) and an encoder of the Whisper shape. Its encoder
    average-pools to 25 Hz and its projector is one Linear, so Na tokens are Na valid pooled frames (4·Na mel frames).
    LLM-side step: Qwen2-Audio's own projector + the same masked_scatter as its forward, then its forward on
    `inputs_embeds` (it has no precomputed-audio input).
    """

    def __init__(self, shape, na, batch, nt, device, dtype, generator):
        from transformers import Qwen2AudioConfig, Qwen2AudioEncoderConfig, Qwen2AudioForConditionalGeneration

        self.name, self.device = "qwen2audio", device
        _, placeholder_id = special_ids(shape)
        whisper = shape["whisper"]
        encoder = Qwen2AudioEncoderConfig(
            **{key: whisper[key] for key in ("d_model", "encoder_layers", "encoder_attention_heads")},
            encoder_ffn_dim=whisper["encoder_ffn_dim"], num_mel_bins=whisper["num_mel_bins"],
            max_source_positions=whisper["max_source_positions"], encoder_layerdrop=0.0,
        )  # fmt: skip
        config = Qwen2AudioConfig(
            audio_config=encoder, text_config=llama_config(shape), audio_token_index=placeholder_id
        )
        config._attn_implementation = "sdpa"
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        self.model = instantiate(Qwen2AudioForConditionalGeneration._from_config, config, device, dtype)
        self.model.model.audio_tower.requires_grad_(False)
        self.model.model.audio_tower.eval()
        window_tokens = whisper["max_source_positions"] // 2
        valid = fill_windows(na, window_tokens)
        audios = len(valid) * batch
        route = dict(
            name="qwen2audio", kind="qwen2audio", integration="plits", projector="linear", downsample=1,
            width=whisper["d_model"], window_tokens=window_tokens, windows=len(valid), valid=valid, plits=na, lal=0,
        )  # fmt: skip
        text_after = nt - PREFIX_TOKENS
        vocab = config.text_config.vocab_size
        self.input_ids = torch.cat(
            [
                random_text(batch, PREFIX_TOKENS, vocab, generator),
                torch.full((batch, na), placeholder_id),
                random_text(batch, text_after, vocab, generator),
            ],
            dim=1,
        ).to(device)
        self.attention_mask = torch.ones_like(self.input_ids)
        self.labels = self.input_ids.masked_fill(self.input_ids == placeholder_id, -100)
        lengths = torch.tensor(valid * batch)
        self.encoder_out = torch.randn(audios, window_tokens, whisper["d_model"], generator=generator).to(
            device, dtype
        )
        self.encoder_valid = (torch.arange(window_tokens)[None] < lengths[:, None]).to(device)
        frames = 2 * whisper["max_source_positions"]
        self.input_features = torch.randn(audios, whisper["num_mel_bins"], frames, generator=generator).to(
            device, dtype
        )
        self.feature_attention_mask = (torch.arange(frames)[None] < 4 * lengths[:, None]).long().to(device)
        self.placeholder_positions = list(range(PREFIX_TOKENS, PREFIX_TOKENS + na))
        self.layout = {
            "seq_len": self.input_ids.shape[1], "plits_tokens": na, "lal_columns": 0, "num_lal_layers": 0,
            "routes": [route],
        }  # fmt: skip

    def _merged_embeds(self):
        """Qwen2-Audio's own projector and masked_scatter (the lines of its forward), on precomputed encoder output."""
        inner = self.model.model
        audio = inner.multi_modal_projector(self.encoder_out)[self.encoder_valid]
        embeds = inner.get_input_embeddings()(self.input_ids)
        mask = (self.input_ids == self.model.config.audio_token_id)[..., None]
        return embeds.masked_scatter(mask, audio.to(embeds.dtype))

    def llm_loss(self):
        return self.model(
            inputs_embeds=self._merged_embeds(), attention_mask=self.attention_mask, labels=self.labels
        ).loss

    def e2e_loss(self):
        return self.model(
            input_ids=self.input_ids, input_features=self.input_features, attention_mask=self.attention_mask,
            feature_attention_mask=self.feature_attention_mask, labels=self.labels,
        ).loss  # fmt: skip

    def encoder_forward(self):
        with torch.no_grad():
            self.model.model.audio_tower(self.input_features)

    def generate(self, e2e, **kwargs):
        if e2e:
            return self.model.generate(
                input_ids=self.input_ids, input_features=self.input_features, attention_mask=self.attention_mask,
                feature_attention_mask=self.feature_attention_mask, **kwargs,
            )  # fmt: skip
        with torch.no_grad():
            embeds = self._merged_embeds()
        return self.model.generate(inputs_embeds=embeds, attention_mask=self.attention_mask, **kwargs)

    def audio_positions(self):
        return self.placeholder_positions


def build(variant: str, shape: dict, na: int, batch: int, nt: int, device, dtype, seed: int, pal_lal_fraction: float):
    generator = torch.Generator().manual_seed(seed)
    if variant == "text":
        return TextBench(shape, na, batch, nt, device, dtype, generator)
    if variant == "qwen2audio":
        return Qwen2AudioBench(shape, na, batch, nt, device, dtype, generator)
    if variant in PAL_ROUTING:
        return PalBench(variant, shape, na, batch, nt, device, dtype, generator, pal_lal_fraction)
    raise ValueError(f"Unknown variant {variant!r}; known: {VARIANTS}")


def audio_seconds(route: dict, shape: dict) -> float | None:
    """Seconds of valid audio behind a route's tokens (50 Hz Whisper, 25 Hz Qwen2-Audio, CLAP 10 s per window)."""
    valid = sum(route["valid"])
    if route["kind"] == "whisper":
        return valid / 50.0
    if route["kind"] == "qwen2audio":
        return valid / 25.0
    if route["kind"] == "clap":
        return 10.0 * valid / route["window_tokens"]
    return None


def batch_for(na: int, batch: int, large_na: int | None) -> int:
    """The sweep's batch rule: `batch`, or 1 above `large_na`."""
    return 1 if large_na is not None and na > large_na else batch


__all__ = ["VARIANTS", "SHAPES", "Unavailable", "build", "audio_seconds", "batch_for"]
