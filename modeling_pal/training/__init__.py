"""Training PAL: the chat collator, trainable parameter groups and the multi-stage curriculum."""

from .collator import PalDataCollator
from .curriculum import (
    CurriculumResult,
    PalTrainer,
    StageResult,
    load_recipe,
    plot_losses,
    run_curriculum,
    sft_trainer_class,
)
from .trainable import TRAINABLE_GROUPS, added_token_ids, in_group, lora_config, set_lora_trainable, set_trainable

__all__ = [
    "TRAINABLE_GROUPS",
    "CurriculumResult",
    "PalDataCollator",
    "PalTrainer",
    "StageResult",
    "added_token_ids",
    "in_group",
    "load_recipe",
    "lora_config",
    "plot_losses",
    "run_curriculum",
    "set_lora_trainable",
    "set_trainable",
    "sft_trainer_class",
]
