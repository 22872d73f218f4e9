"""Map a free-form generated answer onto one of the choices of a multiple-choice question."""

import re

_PUNCTUATION = re.compile(r"[^\w\s]|_")


def normalize_text(text: str) -> str:
    """
    Lower-cases `text`, turns punctuation and symbols into spaces and collapses whitespace.

    Example: `normalize_text("  The (B) Piano!")` is `"the b piano"`.
    """
    return " ".join(_PUNCTUATION.sub(" ", text.casefold()).split())


def _casefold(text: str) -> str:
    return text.strip().casefold()


_EQUALITY_KEYS = (str.strip, _casefold, normalize_text)
# A bare option letter, as multiple-choice answers often are: "(B)", "B.", "Answer: b", "The answer is option B".
_OPTION_LETTER = re.compile(r"(?:the )?(?:correct )?(?:answer )?(?:is )?(?:option |choice )?([a-z])")


def parse_choice(generated_text: str, choices: list[str]) -> str | None:
    """
    Picks the choice that a generated answer names.

    The answer matches a choice when it equals it exactly, then case-insensitively, then after `normalize_text`
    (the first choice of the strictest level that matches wins). An answer that is only an option letter ("(B)",
    "B.", "Answer: b") picks the choice at that position. Otherwise the longest choice whose normalised words appear
    as whole words in the normalised answer wins; among equally long ones, the one appearing first in the answer.

    Args:
        generated_text (`str`): The model's answer, e.g. `"The sound comes from a church."`.
        choices (`list[str]`): The options of the question, e.g. `["Church", "School", "Clock Tower"]`.

    Returns:
        `str | None`: The matching element of `choices`, or `None` when the answer names none of them.
    """
    for key in _EQUALITY_KEYS:
        target = key(generated_text)
        for choice in choices:
            if key(choice) == target:
                return choice
    letter = _OPTION_LETTER.fullmatch(normalize_text(generated_text))
    if letter and ord(letter[1]) - ord("a") < len(choices):
        return choices[ord(letter[1]) - ord("a")]
    padded_text = f" {normalize_text(generated_text)} "
    found = []
    for index, choice in enumerate(choices):
        words = normalize_text(choice)
        position = padded_text.find(f" {words} ")
        if words and position >= 0:
            found.append((-len(words), position, index))
    return choices[min(found)[2]] if found else None
