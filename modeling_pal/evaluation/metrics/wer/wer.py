"""Word and character error rates as one `evaluate` metric, computed by jiwer after Whisper's text normalisation."""

import datasets
import evaluate
import jiwer
from transformers.models.whisper.english_normalizer import BasicTextNormalizer

_DESCRIPTION = (
    "Corpus word and character error rates (substitutions + deletions + insertions over reference words, "
    "`jiwer.wer`, or characters, `jiwer.cer`). "
    "By default both sides first go through Whisper's `BasicTextNormalizer` (lower-case, drop text in brackets or "
    "parentheses, punctuation and symbols to spaces, collapse whitespace). Whisper's `EnglishTextNormalizer` is not "
    "used: it needs the English spelling map (`normalizer.json`) that only Whisper checkpoints ship."
)

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`):
        Transcripts produced by the model.
    references (`list[str]`):
        Ground-truth transcripts; none may be empty after normalisation.
    normalize (`bool`, *optional*, defaults to `True`):
        Whether to apply `BasicTextNormalizer` to both sides before scoring.

Returns:
    `dict`: `{"wer": float, "cer": float}`, 0 for a perfect match; can exceed 1 when the model inserts words.

Example:
    >>> wer = load_metric("wer")
    >>> wer.compute(predictions=["Hello, World!"], references=["hello world"])
    {'wer': 0.0, 'cer': 0.0}
"""

_CITATION = """
@inproceedings{radford2023whisper,
  title={Robust Speech Recognition via Large-Scale Weak Supervision},
  author={Radford, Alec and Kim, Jong Wook and Xu, Tao and Brockman, Greg and McLeavey, Christine and Sutskever, Ilya},
  booktitle={International Conference on Machine Learning},
  year={2023}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Wer(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            codebase_urls=["https://github.com/jitsi/jiwer"],
        )

    def _compute(self, predictions: list[str], references: list[str], normalize: bool = True) -> dict[str, float]:
        if normalize:
            normalizer = BasicTextNormalizer()
            predictions = [normalizer(text) for text in predictions]
            references = [normalizer(text) for text in references]
        return {"wer": float(jiwer.wer(references, predictions)), "cer": float(jiwer.cer(references, predictions))}
