"""Accuracy as an `evaluate` metric, computed by scikit-learn's `accuracy_score`."""

import datasets
import evaluate
from sklearn.metrics import accuracy_score

_DESCRIPTION = "Fraction of predictions equal to their reference (scikit-learn `accuracy_score`)."

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]` or `list[str]`):
        Predicted labels, e.g. class ids or the choice picked by `modeling_pal.evaluation.parse_choice`.
    references (`list[int]` or `list[str]`):
        Ground-truth labels, of the same type as `predictions`.

Returns:
    `dict`: `{"accuracy": float}`, in [0, 1].

Example:
    >>> accuracy = load_metric("accuracy")
    >>> accuracy.compute(predictions=[0, 1, 1, 0], references=[0, 1, 0, 0])
    {'accuracy': 0.75}
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
class Accuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                # strings first: evaluate picks the first format the first example fits, and "3" fits int64
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
                datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
            ],
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.accuracy_score.html"],
        )

    def _compute(self, predictions: list, references: list) -> dict[str, float]:
        return {"accuracy": float(accuracy_score(references, predictions))}
