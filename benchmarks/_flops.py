"""
Analytical FLOP model of one LLM-side training step (forward + backward, 2 FLOPs per multiply-add).

Conventions (also in benchmarks/README.md):

* an op whose input needs a gradient costs 3× its forward (forward, input grad, weight grad); an op whose input is the
  frozen encoder output (first layer of every connector) costs 2× (no input grad);
* causal self-attention over n rows costs `4 · dq · n(n+1)/2` forward (QKᵀ and AV over the visible keys);
  LAL audio columns are dense: `4 · dq · Nt · Na` (every text query scores every audio column, masked or not);
* element-wise work (norms, activations, softmax, masks, optimizer) is not counted: it is what the measured
  "overhead vs prediction" ratio exposes.
"""

from __future__ import annotations

TRAIN = 3.0  # forward + input grad + weight grad
TRAIN_FROZEN_INPUT = 2.0  # forward + weight grad (the input is the frozen encoder output)


def llm_dims(llm: dict) -> dict:
    d = llm["hidden_size"]
    heads = llm["num_attention_heads"]
    head_dim = llm.get("head_dim") or d // heads
    return {
        "d": d,
        "layers": llm["num_hidden_layers"],
        "dq": heads * head_dim,
        "dkv": llm["num_key_value_heads"] * head_dim,
        "ff": llm["intermediate_size"],
        "vocab": llm["vocab_size"],
    }


def dense_per_row(dims: dict) -> float:
    """Forward FLOPs of one decoder layer's projections and SwiGLU FFN for one row."""
    d, dq, dkv, ff = dims["d"], dims["dq"], dims["dkv"], dims["ff"]
    return 2.0 * d * (dq + 2 * dkv) + 2.0 * dq * d + 2.0 * 3 * d * ff


def causal_attention(dims: dict, rows: int) -> float:
    return 4.0 * dims["dq"] * rows * (rows + 1) / 2


def llm_step(dims: dict, batch: int, rows: int) -> dict:
    """Training-step FLOPs of the bare decoder + LM head over `rows` positions per sample (text + PLITS)."""
    layers = dims["layers"] * (rows * dense_per_row(dims) + causal_attention(dims, rows))
    head = rows * 2.0 * dims["d"] * dims["vocab"]
    return {"decoder": TRAIN * batch * layers, "lm_head": TRAIN * batch * head}


def lal_path(dims: dict, batch: int, queries: int, columns: int, num_lal_layers: int, enc_width: int) -> dict:
    """
    The LAL audio path: per LAL layer a Linear projector, k/v projections over Na rows, and queries × Na scores and
    AV, where the queries are every position of the sequence (Nt text, plus PLITS tokens when another encoder or the
    hybrid summaries use PLITS: they are part of the residual stream and query the LAL columns too).
    """
    d, dq, dkv = dims["d"], dims["dq"], dims["dkv"]
    per_layer = {
        "projector": TRAIN_FROZEN_INPUT * columns * 2.0 * enc_width * d,
        "kv_projections": TRAIN * columns * 2.0 * d * 2 * dkv,
        "scores_and_av": TRAIN * 4.0 * dq * queries * columns,
    }
    return {name: batch * num_lal_layers * value for name, value in per_layer.items()}


def plits_projector(dims: dict, batch: int, tokens: int, enc_width: int, downsample: int, kind: str) -> dict:
    """PLITS projector: Linear(C·downsample → d) (+ Linear(d → d) for the MLP) over the PLITS tokens."""
    d = dims["d"]
    first = TRAIN_FROZEN_INPUT * tokens * 2.0 * enc_width * downsample * d
    second = TRAIN * tokens * 2.0 * d * d if kind == "mlp" else 0.0
    return {"projector": batch * (first + second)}


def qformer(
    dims: dict, batch: int, windows: int, window_tokens: int, enc_width: int, queries: int, depth: int
) -> dict:
    """Q-Former summary: per window and layer self-attention and FFN on the queries, cross-attention to all tokens."""
    c, q, t = enc_width, queries, window_tokens
    per_layer = (
        TRAIN * (4 * 2.0 * q * c * c + 4.0 * q * q * c)  # self-attention: q, k, v, o + scores
        + TRAIN * (2 * 2.0 * q * c * c + 4.0 * q * t * c)  # cross-attention: q, o + scores
        + TRAIN_FROZEN_INPUT * 2 * 2.0 * t * c * c  # cross-attention k, v over the (frozen) encoder tokens
        + TRAIN * 2 * 2.0 * q * c * 4 * c  # FFN (4× width)
    )
    out = TRAIN * 2.0 * q * c * dims["d"]
    return {"qformer": batch * windows * (depth * per_layer + out)}


def variant_step(dims: dict, layout: dict, batch: int, nt: int) -> dict:
    """
    FLOPs of one training step of a variant described by `layout` (see `_variants.py`): returns the total, the
    bare-text step at the same Nt, the audio path (total − text) and its breakdown.
    """
    rows = nt + layout.get("plits_tokens", 0)
    text = llm_step(dims, batch, nt)
    parts = llm_step(dims, batch, rows)
    extra: dict[str, float] = {}

    def add(items: dict) -> None:
        for name, value in items.items():
            extra[name] = extra.get(name, 0.0) + value

    for route in layout.get("routes", []):
        if route["integration"] == "plits":
            add(plits_projector(dims, batch, route["plits"], route["width"], route["downsample"], route["projector"]))
        if route["integration"] == "hybrid":
            add(
                qformer(
                    dims,
                    batch,
                    route["windows"],
                    route["window_tokens"],
                    route["width"],
                    route["queries"],
                    route["depth"],
                )
            )
        if route["integration"] in ("lal", "hybrid"):
            add(lal_path(dims, batch, rows, route["lal"], layout["num_lal_layers"], route["width"]))
    audio = {
        "plits_rows_decoder": parts["decoder"] - text["decoder"],
        "plits_rows_lm_head": parts["lm_head"] - text["lm_head"],
        **extra,
    }
    text_total = sum(text.values())
    audio_total = sum(audio.values())
    return {"total": text_total + audio_total, "text": text_total, "audio_path": audio_total, "audio_breakdown": audio}


def layout_from_point(point: dict, default_queries: int = 32, default_depth: int = 2) -> dict:
    """The FLOP-model layout of a stored result point (its `tokens` record), to recompute FLOPs without a model."""
    tokens = point["tokens"]
    routes = []
    for route in tokens.get("routes", []):
        windows = route["windows"]
        routes.append(
            {
                **route,
                "plits": route["plits_tokens"],
                "lal": route["lal_columns"],
                "queries": route.get("queries", route["plits_tokens"] // windows if windows else default_queries),
                "depth": route.get("depth", default_depth),
            }
        )
    return {
        "plits_tokens": tokens.get("plits_tokens", 0),
        "num_lal_layers": len(tokens.get("lal_layers", [])),
        "routes": routes,
    }
