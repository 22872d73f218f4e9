"""Mean average precision for multi-label tagging as an `evaluate` metric (scikit-learn `average_precision_score`)."""

import datasets
import evaluate
from sklearn.metrics import average_precision_score

_DESCRIPTION = (
    "Mean average precision (mAP) for multi-label tagging, e.g. AudioSet: the average precision of each class, "
    "averaged over classes (scikit-learn `average_precision_score(average='macro')`)."
)

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[list[float]]`):
        One row of scores per example, one score per class (probabilities or logits; only their order matters).
    references (`list[list[int]]`):
        One multi-hot row per example: 1 where the class is present, else 0. Same shape as `predictions`.
        scikit-learn scores a class without any positive example as 0 (with a warning), which lowers the mean:
        drop such classes first to follow the AudioSet convention.

Returns:
    `dict`: `{"mean_average_precision": float}`, in [0, 1].

Example:
    >>> mean_average_precision = load_metric("mean_average_precision")
    >>> mean_average_precision.compute(predictions=[[0.9, 0.1], [0.2, 0.8]], references=[[1, 0], [0, 1]])
    {'mean_average_precision': 1.0}
"""

_CITATION = """
@article{scikit-learn,
  title={Scikit-learn: Machine Learning in {P}ython},
  author={Pedregosa, F. and others},
  journal={Journal of Machine Learning Research},
  volume={12},
  pages={2825--2830},
  year={2011}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MeanAveragePrecision(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Sequence(datasets.Value("int64")),
                }
            ),
            reference_urls=[
                "https://scikit-learn.org/stable/modules/generated/sklearn.metrics.average_precision_score.html"
            ],
        )

    def _compute(self, predictions: list[list[float]], references: list[list[int]]) -> dict[str, float]:
        score = average_precision_score(references, predictions, average="macro")
        return {"mean_average_precision": float(score)}
