"""Corpus BLEU as an `evaluate` metric, computed by sacrebleu."""

import datasets
import evaluate
import sacrebleu

_DESCRIPTION = (
    "Corpus BLEU (sacrebleu `corpus_bleu`, default 13a tokenisation and exponential smoothing), e.g. for speech "
    "translation. Scores are on sacrebleu's 0-100 scale."
)

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`):
        Sentences produced by the model.
    references (`list[str]` or `list[list[str]]`):
        One reference, or a list of references, per prediction; every prediction needs the same number of references.
    tokenize (`str`, *optional*, defaults to `"13a"`):
        sacrebleu tokenizer name (e.g. `"13a"`, `"intl"`, `"zh"`, `"ja-mecab"`, `"none"`).
    lowercase (`bool`, *optional*, defaults to `False`):
        Whether to lower-case both sides first.

Returns:
    `dict`:
        - `bleu` (`float`): corpus BLEU in [0, 100].
        - `precisions` (`list[float]`): 1- to 4-gram precisions, in [0, 100].
        - `brevity_penalty` (`float`).
        - `system_length` (`int`), `reference_length` (`int`): token counts.

Example:
    >>> bleu = load_metric("bleu")
    >>> bleu.compute(predictions=["the cat sat on the mat"], references=[["the cat sat on the mat"]])["bleu"]
    100.00000000000004
"""

_CITATION = """
@inproceedings{post-2018-call,
  title={A Call for Clarity in Reporting {BLEU} Scores},
  author={Post, Matt},
  booktitle={Proceedings of the Third Conference on Machine Translation: Research Papers},
  year={2018},
  pages={186--191}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Bleu(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Value("string"),
                        "references": datasets.Sequence(datasets.Value("string")),
                    }
                ),
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
            ],
            codebase_urls=["https://github.com/mjpost/sacrebleu"],
        )

    def _compute(
        self, predictions: list[str], references: list, tokenize: str = "13a", lowercase: bool = False
    ) -> dict:
        references = [[reference] if isinstance(reference, str) else reference for reference in references]
        num_references = {len(reference) for reference in references}
        if len(num_references) != 1:
            raise ValueError(
                f"BLEU needs the same number of references for each prediction, got counts {sorted(num_references)}."
            )
        reference_streams = [list(stream) for stream in zip(*references)]
        score = sacrebleu.corpus_bleu(predictions, reference_streams, tokenize=tokenize, lowercase=lowercase)
        return {
            "bleu": score.score,
            "precisions": score.precisions,
            "brevity_penalty": score.bp,
            "system_length": score.sys_len,
            "reference_length": score.ref_len,
        }
