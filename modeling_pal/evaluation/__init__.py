"""Evaluation helpers: metrics shipped as `evaluate` modules, answer parsing and MMAU export."""

from pathlib import Path
from typing import TYPE_CHECKING

from .answers import normalize_text, parse_choice
from .mmau import (
    MMAU_DIFFICULTIES,
    MMAU_FIELDS,
    MMAU_TASKS,
    to_mmau_records,
    validate_mmau_records,
    write_mmau_json,
)

if TYPE_CHECKING:
    import evaluate


METRICS_DIR = Path(__file__).parent / "metrics"
METRIC_NAMES = ("accuracy", "bleu", "caption_metrics", "mean_average_precision", "wer")


def load_metric(name: str, **kwargs) -> "evaluate.EvaluationModule":
    """
    Loads one of the metrics shipped in `modeling_pal/evaluation/metrics` with `evaluate.load`, offline.

    `evaluate` copies the module into `$HF_HOME/modules` and caches computations in `$HF_HOME/metrics`.

    Args:
        name (`str`): One of `METRIC_NAMES`.
        kwargs: Passed to `evaluate.load`, e.g. `experiment_id`, `num_process` and `process_id` for distributed runs.

    Returns:
        `evaluate.EvaluationModule`: Call `.compute(predictions=..., references=...)` on it.
    """
    if name not in METRIC_NAMES:
        raise ValueError(f"Unknown metric {name!r}; expected one of {METRIC_NAMES}.")
    # `evaluate` reads HF_HOME when first imported, so import it only once a metric is actually needed.
    import evaluate

    return evaluate.load(str(METRICS_DIR / name), **kwargs)


__all__ = [
    "METRICS_DIR",
    "METRIC_NAMES",
    "MMAU_DIFFICULTIES",
    "MMAU_FIELDS",
    "MMAU_TASKS",
    "load_metric",
    "normalize_text",
    "parse_choice",
    "to_mmau_records",
    "validate_mmau_records",
    "write_mmau_json",
]
