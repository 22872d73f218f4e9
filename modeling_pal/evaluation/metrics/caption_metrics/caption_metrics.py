"""Audio-captioning metrics (CIDEr-D, ROUGE-L, METEOR, SPICE, SPIDEr) as an `evaluate` metric, via pycocoevalcap."""

from functools import cache
from pathlib import Path

import datasets
import evaluate
import pycocoevalcap.spice
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.spice.spice import Spice
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

UNAVAILABLE = "unavailable"

# `Spice()` downloads these Stanford CoreNLP 3.6.0 jars when they are missing, so check for them before building it.
SPICE_CORENLP_JARS = tuple(
    Path(pycocoevalcap.spice.__file__).parent / "lib" / name
    for name in ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
)

_DESCRIPTION = (
    "The COCO-caption metrics used for audio captioning (Clotho, AudioCaps), computed by pycocoevalcap with Java: "
    "captions are PTB-tokenised, then scored by CIDEr-D (pycocoevalcap's `Cider`), ROUGE-L and METEOR 1.5. SPICE "
    "and SPIDEr = (CIDEr-D + SPICE) / 2 are computed only when the Stanford CoreNLP 3.6.0 jars are installed in "
    "pycocoevalcap's `spice/lib` folder; otherwise they are reported as the string 'unavailable' and nothing is "
    "downloaded."
)

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`):
        One generated caption per audio clip.
    references (`list[list[str]]`):
        The reference captions of each clip (Clotho has 5, AudioCaps 5 in its test split).

Returns:
    `dict`:
        - `cider_d` (`float`): corpus CIDEr-D, usually in [0, 10].
        - `rouge_l` (`float`): mean ROUGE-L F-score, in [0, 1].
        - `meteor` (`float`): corpus METEOR, in [0, 1].
        - `spice` (`float` or `"unavailable"`): corpus SPICE, in [0, 1].
        - `spider` (`float` or `"unavailable"`): mean of CIDEr-D and SPICE.

Example:
    >>> caption_metrics = load_metric("caption_metrics")
    >>> caption_metrics.compute(predictions=["a dog barks"], references=[["a dog is barking", "a dog barks"]])
"""

_CITATION = """
@inproceedings{vedantam2015cider,
  title={{CIDEr}: Consensus-based Image Description Evaluation},
  author={Vedantam, Ramakrishna and Zitnick, C. Lawrence and Parikh, Devi},
  booktitle={CVPR},
  year={2015}
}
@inproceedings{liu2017spider,
  title={Improved Image Captioning via Policy Gradient Optimization of {SPIDEr}},
  author={Liu, Siqi and Zhu, Zhenhai and Ye, Ning and Guadarrama, Sergio and Murphy, Kevin},
  booktitle={ICCV},
  year={2017}
}
"""


@cache
def meteor_scorer() -> Meteor:
    """One METEOR Java process per Python process: starting it (and loading its paraphrase tables) takes ~6 s."""
    return Meteor()


def spice_available() -> bool:
    """Whether the Stanford CoreNLP jars that SPICE needs are installed."""
    return all(path.is_file() for path in SPICE_CORENLP_JARS)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CaptionMetrics(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
            codebase_urls=["https://github.com/salaniz/pycocoevalcap"],
        )

    def _compute(self, predictions: list[str], references: list[list[str]]) -> dict:
        tokenizer = PTBTokenizer()
        candidates = tokenizer.tokenize({i: [{"caption": text}] for i, text in enumerate(predictions)})
        gold = tokenizer.tokenize({i: [{"caption": text} for text in texts] for i, texts in enumerate(references)})
        cider_d, _ = Cider().compute_score(gold, candidates)
        rouge_l, _ = Rouge().compute_score(gold, candidates)
        meteor, _ = meteor_scorer().compute_score(gold, candidates)
        scores = {"cider_d": float(cider_d), "rouge_l": float(rouge_l), "meteor": float(meteor)}
        if spice_available():
            spice, _ = Spice().compute_score(gold, candidates)
            scores.update(spice=float(spice), spider=(scores["cider_d"] + float(spice)) / 2)
        else:
            scores.update(spice=UNAVAILABLE, spider=UNAVAILABLE)
        return scores
