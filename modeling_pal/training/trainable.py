"""Which parameters a curriculum stage trains: named groups of a `PalForConditionalGeneration`, for full fine-tuning
(`set_trainable`) or LoRA (`lora_config`)."""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import nn

from ..modeling_pal import RESERVED_TOKEN_PREFIX

TRAINABLE_GROUPS = ("connectors", "llm", "llm_attention", "llm_ffn", "encoders")
LLM_PREFIX = "model.language_model."
HEAD_PREFIX = "lm_head."
ENCODER_PREFIX = "model.audio_towers."
# LAL-only parameters that live inside the LLM's attention (e.g. `audio_k_proj` when `lal_kv_source="separate"`)
LAL_ONLY = re.compile(r"\.self_attn\.audio_\w+\.")
ATTENTION = re.compile(r"\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|o_proj|q_norm|k_norm)|input_layernorm)\.")
FFN = re.compile(r"\.layers\.\d+\.mlp\.")
# PEFT's trainable parameters: LoRA matrices (`...q_proj.lora_A.default.weight`), `modules_to_save` copies and
# `trainable_token_indices` deltas
LORA_PARAMETER = re.compile(r"\.(\w+)\.lora_\w+\.")
SAVED_COPY = ".modules_to_save."
TOKEN_DELTA = ".trainable_tokens_delta."
# The `LoraConfig` options `lora_config` derives from a stage's groups
LORA_DERIVED_OPTIONS = ("task_type", "target_modules", "modules_to_save", "trainable_token_indices")
LORA_TARGETS = {
    "llm": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "llm_attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "llm_ffn": ("gate_proj", "up_proj", "down_proj"),
}


def in_group(group: str, name: str) -> bool:
    """
    Whether parameter `name` (as in `PalForConditionalGeneration.named_parameters()`) belongs to `group`:

    - `connectors`: everything outside the LLM, its head and the encoders (PLITS projectors, Q-Formers, LAL
      projectors) plus the LAL-only parameters inside the LLM's attention (`audio_k_proj`, `audio_v_proj`);
    - `llm`: all of `language_model` and `lm_head`, except those LAL-only parameters;
    - `llm_attention`: each decoder layer's q/k/v/o projections, their norms (`q_norm`, `k_norm`) and the attention's
      input norm;
    - `llm_ffn`: each decoder layer's `mlp.*`;
    - `encoders`: the audio encoders (`audio_towers`).
    """
    in_llm = name.startswith(LLM_PREFIX)
    lal_only = in_llm and LAL_ONLY.search(name) is not None
    if group == "connectors":
        return lal_only or not (in_llm or name.startswith((HEAD_PREFIX, ENCODER_PREFIX)))
    if group == "llm":
        return (in_llm or name.startswith(HEAD_PREFIX)) and not lal_only
    if group == "llm_attention":
        return in_llm and ATTENTION.search(name) is not None
    if group == "llm_ffn":
        return in_llm and FFN.search(name) is not None
    if group == "encoders":
        return name.startswith(ENCODER_PREFIX)
    raise ValueError(f"Unknown trainable group {group!r}; choose from {TRAINABLE_GROUPS}")


def added_token_ids(config) -> list[int]:
    """
    Ids of PAL's special tokens that were added to the LLM's vocabulary (new, untrained embedding rows). Reused
    reserved tokens (Llama-3's `<|reserved_special_token_N|>`) are not counted: their rows already exist.
    """
    tokens = {
        config.audio_token: config.audio_token_id,
        config.audio_placeholder_token: config.audio_placeholder_token_id,
    }
    return sorted({token_id for token, token_id in tokens.items() if not token.startswith(RESERVED_TOKEN_PREFIX)})


def _token_row_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The input embedding and (when untied) the output embedding, by parameter name."""
    by_tensor = {id(parameter): name for name, parameter in model.named_parameters()}
    parameters = (model.get_input_embeddings().weight, model.get_output_embeddings().weight)
    return {by_tensor[id(parameter)]: parameter for parameter in parameters}


def _mask_rows(parameter: nn.Parameter, rows: list[int]) -> torch.utils.hooks.RemovableHandle:
    """Zeroes the gradient of every row of `parameter` but `rows`."""
    mask = torch.zeros(parameter.shape[0], 1, dtype=parameter.dtype, device=parameter.device)
    mask[rows] = 1
    return parameter.register_hook(lambda grad: grad * mask)


def row_masked_parameters(model: nn.Module) -> set[str]:
    """Names of the parameters that `set_trainable` trains only on some rows (to keep out of weight decay)."""
    return set(getattr(model, "_pal_row_masks", {}))


def set_trainable(model: nn.Module, groups: str | Iterable[str]) -> dict[str, int]:
    """
    Freezes every parameter of a `PalForConditionalGeneration` except those of `groups` (see `in_group`).

    With `connectors`, the embedding rows of PAL's added special tokens (and their `lm_head` rows when untied) train
    too, through a gradient mask on the embedding matrices; when reserved tokens were reused there are none. Call
    again to switch stages: earlier masks are removed. Keep row-masked parameters out of weight decay
    (`row_masked_parameters`), or the other rows decay.

    Returns:
        `{group: trainable parameter count}` for each requested group (groups may overlap, e.g. `llm` and
        `llm_attention`).
    """
    groups = [groups] if isinstance(groups, str) else list(groups)
    for group in groups:
        if group not in TRAINABLE_GROUPS:
            raise ValueError(f"Unknown trainable group {group!r}; choose from {TRAINABLE_GROUPS}")
    for handle in getattr(model, "_pal_row_masks", {}).values():
        handle.remove()
    model._pal_row_masks = {}
    counts = dict.fromkeys(groups, 0)
    for name, parameter in model.named_parameters():
        selected = [group for group in groups if in_group(group, name)]
        parameter.requires_grad_(bool(selected))
        for group in selected:
            counts[group] += parameter.numel()
    if "connectors" in groups:
        counts["connectors"] += _train_added_token_rows(model)
    return counts


def _train_added_token_rows(model: nn.Module) -> int:
    """Trains the embedding rows of PAL's added tokens in still-frozen embedding matrices; returns their size."""
    rows = added_token_ids(model.config)
    count = 0
    for name, parameter in _token_row_parameters(model).items():
        if rows and not parameter.requires_grad:
            parameter.requires_grad_(True)
            model._pal_row_masks[name] = _mask_rows(parameter, rows)
            count += len(rows) * parameter.shape[1]
    return count


def connector_module_names(model: nn.Module) -> list[str]:
    """The largest submodules (not containers) whose parameters are all connectors, e.g. each PLITS projector."""
    names = []
    for name, module in model.named_modules():
        parameter_names = [f"{name}.{sub}".lstrip(".") for sub, _ in module.named_parameters()]
        if isinstance(module, (nn.ModuleDict, nn.ModuleList)) or not parameter_names:
            continue
        if not any(name.startswith(f"{chosen}.") for chosen in names) and all(
            in_group("connectors", full) for full in parameter_names
        ):
            names.append(name)
    return names


def lora_config(model: nn.Module, groups: Iterable[str], **lora_kwargs):
    """
    A PEFT `LoraConfig` for a stage that would train `groups` in full: LoRA on the LLM's projections of its `llm*`
    groups (a regex that reaches `language_model` only, never an encoder's `q_proj`), the connectors (and with
    `encoders` each encoder) fully trained through `modules_to_save`, and PAL's added token rows through
    `trainable_token_indices`.

    Args:
        model: the `PalForConditionalGeneration` to adapt.
        groups: the stage's groups; at least one `llm*` group.
        lora_kwargs: `LoraConfig` options such as `r`, `lora_alpha`, `lora_dropout`.
    """
    from peft import LoraConfig

    groups = list(groups)
    projections = sorted({name for group in groups for name in LORA_TARGETS.get(group, ())})
    if not projections:
        raise ValueError(f"LoRA needs an llm group (one of {sorted(LORA_TARGETS)}), got {groups}")
    modules_to_save = connector_module_names(model) if "connectors" in groups else []
    if "encoders" in groups:
        modules_to_save += [f"{ENCODER_PREFIX}{slot}" for slot in range(len(model.model.audio_towers))]
    new_rows = added_token_ids(model.config) if "connectors" in groups else []
    return LoraConfig(
        task_type="CAUSAL_LM",
        target_modules=rf".*language_model.*\.({'|'.join(projections)})",
        modules_to_save=modules_to_save or None,
        trainable_token_indices={"embed_tokens": new_rows} if new_rows else None,
        **lora_kwargs,
    )


def _lora_group(name: str) -> str | None:
    """The group whose training a PEFT-trainable parameter stands for (its projection for LoRA), else `None`."""
    lora = LORA_PARAMETER.search(name)
    if lora is not None:
        return lora.group(1)
    if SAVED_COPY in name:
        return "encoders" if ENCODER_PREFIX in name else "connectors"
    return "connectors" if TOKEN_DELTA in name else None


def set_lora_trainable(model: nn.Module, groups: Iterable[str]) -> dict[str, int]:
    """
    Trains, in a PEFT model built with `lora_config` for the union of several stages' groups, only what `groups`
    asks for: the LoRA adapters of their LLM projections, and with `connectors` (`encoders`) the connector (encoder)
    copies in `modules_to_save` and the added-token rows. Everything else is frozen; adapters not trained yet are
    still zero (LoRA's `B` starts at zero), so they leave the model's outputs unchanged.

    Returns:
        `{"lora": ..., "connectors": ...}`: trainable LoRA parameters, and the trainable parameters that train in full.
    """
    groups = set(groups)
    wanted = groups | {projection for group in groups for projection in LORA_TARGETS.get(group, ())}
    counts = {"lora": 0, "connectors": 0}
    for name, parameter in model.named_parameters():
        group = _lora_group(name)
        parameter.requires_grad_(group in wanted)
        if group in wanted:
            counts["lora" if LORA_PARAMETER.search(name) else "connectors"] += parameter.numel()
    return counts
