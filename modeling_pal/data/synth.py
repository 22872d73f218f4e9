"""
PAL-Synth: a small synthetic audio question-answering dataset, built offline in seconds, in PAL's row schema.

Clips are sound events (tones, chirps, noise colours, click trains, sirens, AM/FM tones, silence), music-like
material (melodies going up or down, major and minor chords, slow or fast), espeak-ng speech (digit strings in
English, short sentences in five languages) and mixtures of two events. Tasks mirror OpenAQA's mix of closed- and
open-ended questions. See `docs/data.md` and `docs/data_schema.md`.

    python -m modeling_pal.data.synth --out data/pal_synth --size 3000 --seed 0
"""

from __future__ import annotations

import argparse
import itertools
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from datasets import Audio, Dataset, DatasetDict, DatasetInfo, Features, List, Value
from tqdm.auto import tqdm

from ._synth_audio import SAMPLING_RATE, Clip, Event, Speech, encode_wav, render_clip, synthesize_speech

PAL_FEATURES = Features(
    {
        "id": Value("string"),
        "audio": Audio(sampling_rate=SAMPLING_RATE),
        "messages": List(
            {"role": Value("string"), "content": List({"type": Value("string"), "text": Value("string")})}
        ),
        "task": Value("string"),
        "task_type": Value("string"),
        "question": Value("string"),
        "answer": Value("string"),
        "choices": List(Value("string")),
        "label": Value("string"),
        "events": List(Value("string")),
        "caption": Value("string"),
        "transcript": Value("string"),
        "language": Value("string"),
        "duration": Value("float64"),
    }
)
TASK_TYPES = {
    "classification": "classification",
    "captioning": "closed",
    "counting": "closed",
    "temporal_order": "closed",
    "speech_detection": "closed",
    "language_id": "closed",
    "transcription": "closed",
    "open_qa": "open",
}
STAGE_TASK_TYPES = {1: ("classification",), 2: ("classification", "closed"), 3: ("classification", "closed", "open")}
SPLITS = ("train", "validation", "test", "test_compositional")
DEFAULT_SIZE = 3000
# Raised whenever the same (size, seed) starts giving other rows, so that a PAL-Synth saved by another version is told
# apart (`pal_synth_version`). 2.0.0: melodies rise or fall note by note, captioning rows are closed-ended (stage 2);
# earlier builds carry no version.
PAL_SYNTH_VERSION = "2.0.0"

# Share of each task in the i.i.d. splits, and in the compositional split (two-event tasks only).
TASK_WEIGHTS = {
    "classification": 0.40,
    "captioning": 0.10,
    "counting": 0.08,
    "temporal_order": 0.10,
    "speech_detection": 0.08,
    "language_id": 0.08,
    "transcription": 0.08,
    "open_qa": 0.08,
}
COMPOSITIONAL_TASK_WEIGHTS = {"temporal_order": 0.40, "captioning": 0.25, "open_qa": 0.20, "speech_detection": 0.15}

# The classification task: eight acoustically well separated classes.
SOUND_CLASSES = (
    "steady tone",
    "rising chirp",
    "falling chirp",
    "white noise",
    "brown noise",
    "click train",
    "siren",
    "speech",
)
# Events that mix in pairs. A pair (i, j) with (i + j) % 5 == 0 is held out: it appears only in
# `test_compositional`, while each of its events still appears in train, alone and with other partners.
MIX_EVENTS = (
    "steady tone",
    "rising chirp",
    "falling chirp",
    "white noise",
    "pink noise",
    "brown noise",
    "click train",
    "siren",
    "tremolo tone",
    "vibrato tone",
    "rising melody",
    "falling melody",
    "major chord",
    "minor chord",
    "speech",
)
ALL_PAIRS = tuple(itertools.combinations(MIX_EVENTS, 2))
HELD_OUT_PAIRS = tuple(pair for pair in ALL_PAIRS if sum(map(MIX_EVENTS.index, pair)) % 5 == 0)
TRAIN_PAIRS = tuple(pair for pair in ALL_PAIRS if pair not in HELD_OUT_PAIRS)

LANGUAGES = {"en-us": "English", "en-gb": "English", "de": "German", "fr": "French", "es": "Spanish", "it": "Italian"}
LANGUAGE_NAMES = tuple(dict.fromkeys(LANGUAGES.values()))
SENTENCES = {
    "English": (
        "The weather is nice today.",
        "I would like a cup of tea.",
        "Where is the train station?",
        "My brother plays the guitar.",
        "We are going to the market.",
        "Please close the door.",
        "The book is on the table.",
        "She reads the newspaper every morning.",
    ),
    "German": (
        "Das Wetter ist heute schön.",
        "Ich möchte eine Tasse Tee.",
        "Wo ist der Bahnhof?",
        "Mein Bruder spielt Gitarre.",
        "Wir gehen auf den Markt.",
        "Bitte schließ die Tür.",
        "Das Buch liegt auf dem Tisch.",
        "Sie liest jeden Morgen die Zeitung.",
    ),
    "French": (
        "Il fait beau aujourd'hui.",
        "Je voudrais une tasse de thé.",
        "Où est la gare ?",
        "Mon frère joue de la guitare.",
        "Nous allons au marché.",
        "Ferme la porte, s'il te plaît.",
        "Le livre est sur la table.",
        "Elle lit le journal chaque matin.",
    ),
    "Spanish": (
        "Hoy hace buen tiempo.",
        "Quisiera una taza de té.",
        "¿Dónde está la estación de tren?",
        "Mi hermano toca la guitarra.",
        "Vamos al mercado.",
        "Por favor, cierra la puerta.",
        "El libro está sobre la mesa.",
        "Ella lee el periódico cada mañana.",
    ),
    "Italian": (
        "Oggi fa bel tempo.",
        "Vorrei una tazza di tè.",
        "Dov'è la stazione?",
        "Mio fratello suona la chitarra.",
        "Andiamo al mercato.",
        "Per favore, chiudi la porta.",
        "Il libro è sul tavolo.",
        "Lei legge il giornale ogni mattina.",
    ),
}
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
VOICE_VARIANTS = ("m1", "m3", "m5", "m7", "f1", "f2", "f3", "f4")

# Question paraphrases; the first of each is the canonical one (the converters use it).
QUESTIONS = {
    "classification": (
        "What sound is this? Choose one of: {choices}.",
        "Which of these best describes the sound: {choices}?",
        "Classify the sound. Options: {choices}.",
    ),
    "captioning": (
        "Describe the audio.",
        "Write a short caption for this clip.",
        "What do you hear? Answer in one sentence.",
    ),
    "count_beep": ("How many beeps are there?", "Count the beeps in this clip.", "How many times does the tone beep?"),
    "count_click": ("How many clicks are there?", "Count the clicks you hear.", "How many separate clicks are there?"),
    "count_events": ("How many different sounds are there?", "Count the distinct sound events in this clip."),
    "temporal_order": (
        "Which sound comes first: the {a} or the {b}?",
        "Which came first, the {a} or the {b}?",
        "Which do you hear first: the {a} or the {b}?",
    ),
    "before_after": ("Does the {a} start before or after the {b}?", "Is the {a} heard before or after the {b}?"),
    "speech_detection": (
        "Is there speech in this clip?",
        "Is anyone speaking?",
        "Does the audio contain a human voice?",
    ),
    "language_id": (
        "Which language is spoken? Choose one of: {choices}.",
        "What language is the speaker using: {choices}?",
        "Identify the spoken language. Options: {choices}.",
    ),
    "transcription": ("Transcribe the speech.", "What digits are spoken?", "Write down what the speaker says."),
}


@dataclass(frozen=True)
class _OpenTemplate:
    """Free-form question paraphrases and answer paraphrases, formatted with an event's attributes."""

    questions: tuple[str, ...]
    answers: tuple[str, ...]


SOURCE_QA = _OpenTemplate(
    ("What could have produced this sound?", "What is the likely source of this sound?"),
    ("It sounds like {source}.", "Most likely {source}."),
)
PITCH_QA = _OpenTemplate(
    ("Is the tone high or low in pitch?", "How high does the tone sound?"),
    ("It is a {pitch}-pitched tone.", "The tone is {pitch} in pitch."),
)
DIRECTION_QA = _OpenTemplate(
    ("Does the melody go up or down?", "In which direction does the melody move?"),
    ("The melody goes {direction}.", "It moves {direction}, note by note."),
)
TEMPO_QA = _OpenTemplate(
    ("Is the music fast or slow?", "How fast are the notes played?"),
    ("The notes are played at a {tempo} tempo.", "It is {tempo}: about {notes_per_second} notes per second."),
)
MOOD_QA = _OpenTemplate(
    ("Is the chord major or minor?", "What is the mood of this chord?"),
    ("It is a {quality} chord, which sounds {mood}.", "A {quality} chord; it sounds {mood}."),
)
ORDER_QA = _OpenTemplate(
    ("What happens in this clip?", "Describe the sequence of sounds."),
    ("First {a}, then {b}.", "The clip starts with {a}, followed by {b}."),
)
INVENTORY_QA = _OpenTemplate(
    ("What sounds can you hear?", "Which sound events occur in this clip?"),
    ("I can hear {a} and {b}.", "There are two sounds: {a} and {b}."),
)
ATTRIBUTE_QA = {
    "steady tone": (PITCH_QA,),
    "tremolo tone": (PITCH_QA,),
    "vibrato tone": (PITCH_QA,),
    "rising melody": (DIRECTION_QA, TEMPO_QA),
    "falling melody": (DIRECTION_QA, TEMPO_QA),
    "major chord": (MOOD_QA,),
    "minor chord": (MOOD_QA,),
}
PHRASES = {
    "steady tone": "a steady {pitch}-pitched tone",
    "rising chirp": "a chirp sweeping upward",
    "falling chirp": "a chirp sweeping downward",
    "white noise": "a burst of hissing white noise",
    "pink noise": "soft pink noise",
    "brown noise": "deep rumbling brown noise",
    "click train": "a rapid train of clicks",
    "siren": "a wailing siren",
    "tremolo tone": "a {pitch}-pitched tone pulsing in loudness",
    "vibrato tone": "a {pitch}-pitched tone with vibrato",
    "rising melody": "a {tempo} melody going up",
    "falling melody": "a {tempo} melody going down",
    "major chord": "a bright major chord",
    "minor chord": "a sad-sounding minor chord",
    "silence": "silence",
    "beep": "a single short beep",
    "click": "a single click",
    "speech": "a {voice} {saying}",
}
SOURCES = {
    "steady tone": "an electronic test tone or a tuning fork",
    "rising chirp": "a synthesizer sweep rising in pitch",
    "falling chirp": "a synthesizer sweep falling in pitch, like a laser effect",
    "white noise": "radio static or escaping steam",
    "pink noise": "steady rainfall or a waterfall",
    "brown noise": "distant thunder or a strong wind",
    "click train": "a ratchet or a fast-ticking mechanism",
    "siren": "an emergency vehicle's siren",
    "tremolo tone": "an electric organ with a tremolo effect",
    "vibrato tone": "a singer or a violin holding a note with vibrato",
    "rising melody": "an instrument playing an ascending scale",
    "falling melody": "an instrument playing a descending scale",
    "major chord": "a piano or a guitar playing a major chord",
    "minor chord": "a piano or a guitar playing a minor chord",
    "speech": "a {voice} {saying}",
}
COUNTED = {"beep": "short beeps", "click": "isolated clicks"}

MIX_DURATION = (0.8, 2.0)  # seconds of a non-speech event in a mixture
CLASSIFICATION_DURATION = (1.0, 3.0)
LEAD_IN = (0.05, 0.3)
MIX_GAP = (-0.3, 0.4)  # negative: the second event overlaps the first
SEQUENCE_GAP = (0.15, 0.5)  # counted sounds never overlap
MIN_CLIP_DURATION = 1.0
LONG_CLIP_PROBABILITY = 0.1
LONG_CLIP_DURATION = (6.0, 10.0)
MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)


def chat_messages(question: str, answer: str) -> list[dict]:
    """PAL's chat for one row: the user turn holds the row's audio and the question, the assistant turn the answer."""
    return [
        {"role": "user", "content": [{"type": "audio", "text": None}, {"type": "text", "text": question}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:]


def _pitched(rng: np.random.Generator) -> dict:
    """A clearly high (900-2000 Hz) or clearly low (200-500 Hz) frequency."""
    pitch = str(rng.choice(["high", "low"]))
    low, high = (900.0, 2000.0) if pitch == "high" else (200.0, 500.0)
    return {"pitch": pitch, "frequency": float(np.exp(rng.uniform(np.log(low), np.log(high))))}


def _melody(rng: np.random.Generator, direction: str) -> dict:
    """Strictly rising or falling notes of a major scale, slow (4-5 notes) or fast (7-10 notes)."""
    tempo = str(rng.choice(["slow", "fast"]))
    count, note_seconds = (
        (int(rng.integers(4, 6)), rng.uniform(0.3, 0.45))
        if tempo == "slow"
        else (int(rng.integers(7, 11)), rng.uniform(0.1, 0.15))
    )
    degrees = np.cumsum(rng.choice([1, 1, 2], size=count)) + int(rng.integers(0, 3))
    tonic = int(rng.integers(55, 63))
    notes = [tonic + 12 * int(d // 7) + MAJOR_SCALE[d % 7] for d in degrees]
    return {
        "kind": "melody",
        "midi_notes": notes if direction == "up" else notes[::-1],
        "note_seconds": note_seconds,
        "duration": count * note_seconds,
        "tempo": tempo,
        "direction": direction,
        "notes_per_second": int(round(1 / note_seconds)),
    }


def _chord(rng: np.random.Generator, quality: str) -> dict:
    root = int(rng.integers(48, 61))
    third = 4 if quality == "major" else 3
    mood = "bright" if quality == "major" else "sad"
    return {"kind": "chord", "midi_notes": [root, root + third, root + 7, root + 12], "quality": quality, "mood": mood}


def _noise(exponent: int) -> Callable[[np.random.Generator], dict]:
    return lambda rng: {"kind": "noise", "exponent": exponent}


def _chirp(direction: str) -> Callable[[np.random.Generator], dict]:
    def sample(rng: np.random.Generator) -> dict:
        low, high = rng.uniform(200, 500), rng.uniform(2000, 5000)
        return {
            "kind": "chirp",
            "start_hz": low if direction == "up" else high,
            "end_hz": high if direction == "up" else low,
        }

    return sample


# Random signal parameters per event name (durations and gains are drawn by the planner).
PARAMETER_SAMPLERS: dict[str, Callable[[np.random.Generator], dict]] = {
    "steady tone": lambda rng: {"kind": "tone", **_pitched(rng)},
    "rising chirp": _chirp("up"),
    "falling chirp": _chirp("down"),
    "white noise": _noise(0),
    "pink noise": _noise(1),
    "brown noise": _noise(2),
    "click train": lambda rng: {"kind": "clicks", "rate_hz": rng.uniform(8, 25)},
    "siren": lambda rng: {
        "kind": "siren",
        "low_hz": rng.uniform(500, 800),
        "high_hz": rng.uniform(1100, 1600),
        "period": rng.uniform(0.6, 1.2),
    },
    "tremolo tone": lambda rng: {"kind": "tremolo", **_pitched(rng), "rate_hz": rng.uniform(3, 7), "depth": 0.9},
    "vibrato tone": lambda rng: {"kind": "vibrato", **_pitched(rng), "rate_hz": rng.uniform(5, 8), "depth": 0.05},
    "rising melody": lambda rng: _melody(rng, "up"),
    "falling melody": lambda rng: _melody(rng, "down"),
    "major chord": lambda rng: _chord(rng, "major"),
    "minor chord": lambda rng: _chord(rng, "minor"),
    "silence": lambda rng: {"kind": "silence"},
    "beep": lambda rng: {"kind": "tone", **_pitched(rng)},
    "click": lambda rng: {"kind": "clicks", "rate_hz": 0.0, "duration": 0.02},
}


def _speech_params(rng: np.random.Generator, language: str | None = None, digits: bool | None = None) -> dict:
    """
    An espeak-ng utterance with a random voice, speed and pitch: digit words in English or a short sentence (random
    when `digits` is None: 30% digits), in `language` (random when None).
    """
    digits = bool(rng.random() < 0.3) if digits is None else digits
    language = language or str(rng.choice(["en-us", "en-gb"] if digits else list(LANGUAGES)))
    name = LANGUAGES[language]
    text = " ".join(rng.choice(DIGITS, size=int(rng.integers(3, 7)))) if digits else str(rng.choice(SENTENCES[name]))
    variant = str(rng.choice(VOICE_VARIANTS))
    speech = Speech(text, f"{language}+{variant}", int(rng.integers(140, 191)), int(rng.integers(30, 71)))
    return {
        "kind": "speech",
        "speech": speech,
        "text": text,
        "language": language,
        "voice": "man" if variant.startswith("m") else "woman",
        "saying": "reading out digits in English" if digits else f"speaking {name}",
    }


def _phrase(event: Event) -> str:
    """A noun phrase for an event, e.g. "a steady high-pitched tone"."""
    return PHRASES[event.name].format(**event.params)


def describe(clip: Clip) -> str:
    """A reference caption of a clip, from its events' names and attributes."""
    names = [event.name for event in clip.events]
    if len(names) > 1 and len(set(names)) == 1 and names[0] in COUNTED:
        text = f"{DIGITS[len(names)]} {COUNTED[names[0]]}"
    else:
        text = ", followed by ".join(map(_phrase, clip.events))
    if clip.min_duration > MIN_CLIP_DURATION:
        text += " in a long, otherwise quiet recording"
    return _sentence(text) + "."


@dataclass
class _RowPlan:
    """Everything about a row but its rendered audio."""

    task: str
    clip: Clip
    question: str
    answer: str
    choices: list[str] = field(default_factory=list)
    label: str = ""


class _Planner:
    """
    Draws the rows of one split. Each task method returns a `_RowPlan`; `index` is the row's rank within its task
    (it balances classes). Two-event clips use only `pairs`: the held-out pairs in the compositional split, the
    others elsewhere.
    """

    def __init__(self, rng: np.random.Generator, compositional: bool):
        self.rng = rng
        self.compositional = compositional
        self.pairs = HELD_OUT_PAIRS if compositional else TRAIN_PAIRS

    def pick(self, options: Sequence[str]) -> str:
        return options[int(self.rng.integers(len(options)))]

    def event(
        self, name: str, gap: float = 0.0, duration_range: tuple[float, float] = MIX_DURATION, **speech_options
    ) -> Event:
        """An event with random parameters, gain and (unless its signal fixes it) duration."""
        if name == "speech":
            params = _speech_params(self.rng, **speech_options)
        else:
            params = PARAMETER_SAMPLERS[name](self.rng)
        params.setdefault("duration", self.rng.uniform(*duration_range))
        return Event(name, {**params, "gain_db": self.rng.uniform(-10, -1)}, gap)

    def sequence(self, names: Sequence[str], gaps: tuple[float, float] = MIX_GAP) -> list[Event]:
        """Events one after another: a short lead-in, then `gaps` seconds between one's end and the next onset."""
        return [self.event(name, self.rng.uniform(*(gaps if i else LEAD_IN))) for i, name in enumerate(names)]

    def pair(self, speech: bool | None = None) -> list[Event]:
        """Two events of an allowed pair in random order; `speech` requires (True) or forbids (False) speech."""
        candidates = [pair for pair in self.pairs if speech is None or ("speech" in pair) == speech]
        names = list(candidates[int(self.rng.integers(len(candidates)))])
        self.rng.shuffle(names)
        return self.sequence(names)

    def single(self, names: Sequence[str]) -> list[Event]:
        return self.sequence([self.pick(names)])

    def clip(self, events: list[Event], long_probability: float = 0.0) -> Clip:
        """A clip of `events`; sometimes padded with silence to 6-10 s (never a clip of silence alone)."""
        is_long = events[0].name != "silence" and self.rng.random() < long_probability
        min_duration = self.rng.uniform(*LONG_CLIP_DURATION) if is_long else MIN_CLIP_DURATION
        return Clip(events, int(self.rng.integers(2**32)), min_duration, self.rng.uniform(-65, -50))

    def two_or_one(self, names: Sequence[str], pair_probability: float = 0.5) -> list[Event]:
        """A pair (always in the compositional split) or a single event from `names`."""
        return self.pair() if self.compositional or self.rng.random() < pair_probability else self.single(names)

    def classification(self, index: int) -> _RowPlan:
        label = SOUND_CLASSES[index % len(SOUND_CLASSES)]
        events = [self.event(label, self.rng.uniform(*LEAD_IN), CLASSIFICATION_DURATION)]
        question = self.pick(QUESTIONS["classification"]).format(choices=", ".join(SOUND_CLASSES))
        return _RowPlan("classification", self.clip(events), question, label, list(SOUND_CLASSES), label)

    def captioning(self, index: int) -> _RowPlan:
        clip = self.clip(self.two_or_one(MIX_EVENTS), LONG_CLIP_PROBABILITY)
        return _RowPlan("captioning", clip, self.pick(QUESTIONS["captioning"]), describe(clip))

    def counting(self, index: int) -> _RowPlan:
        variant = self.pick(["beep", "click", "events"])
        if variant == "events":
            events = self.sequence(self._distinct_events(int(self.rng.integers(1, 4))), SEQUENCE_GAP)
        else:
            sound = self.event(variant, duration_range=(0.1, 0.2))
            gaps = [self.rng.uniform(*(SEQUENCE_GAP if i else LEAD_IN)) for i in range(int(self.rng.integers(1, 7)))]
            events = [Event(variant, sound.params, gap) for gap in gaps]
        question = self.pick(QUESTIONS[f"count_{variant}"])
        return _RowPlan("counting", self.clip(events), question, str(len(events)))

    def _distinct_events(self, count: int) -> list[str]:
        """`count` different non-speech events whose every pair is allowed in this split."""
        while True:
            names = [str(name) for name in self.rng.choice(MIX_EVENTS[:-1], size=count, replace=False)]
            if all(
                tuple(sorted(pair, key=MIX_EVENTS.index)) in self.pairs for pair in itertools.combinations(names, 2)
            ):
                return names

    def temporal_order(self, index: int) -> _RowPlan:
        events = self.pair()
        first, second = events[0].name, events[1].name
        a, b = (first, second) if self.rng.random() < 0.5 else (second, first)
        if self.rng.random() < 0.5:
            question = self.pick(QUESTIONS["temporal_order"]).format(a=a, b=b)
            choices, answer = [a, b], first
        else:
            question = self.pick(QUESTIONS["before_after"]).format(a=a, b=b)
            choices, answer = ["before", "after"], "before" if a == first else "after"
        return _RowPlan("temporal_order", self.clip(events, LONG_CLIP_PROBABILITY), question, answer, choices)

    def speech_detection(self, index: int) -> _RowPlan:
        has_speech = index % 2 == 0
        if self.compositional or self.rng.random() < 0.5:
            events = self.pair(speech=has_speech)
        else:
            events = self.single(["speech"] if has_speech else [*MIX_EVENTS[:-1], "silence"])
        question = self.pick(QUESTIONS["speech_detection"])
        answer = "yes" if has_speech else "no"
        return _RowPlan("speech_detection", self.clip(events, LONG_CLIP_PROBABILITY), question, answer, ["yes", "no"])

    def language_id(self, index: int) -> _RowPlan:
        name = LANGUAGE_NAMES[index % len(LANGUAGE_NAMES)]
        language = self.pick([code for code, language_name in LANGUAGES.items() if language_name == name])
        events = [self.event("speech", self.rng.uniform(*LEAD_IN), language=language, digits=False)]
        question = self.pick(QUESTIONS["language_id"]).format(choices=", ".join(LANGUAGE_NAMES))
        return _RowPlan("language_id", self.clip(events), question, name, list(LANGUAGE_NAMES))

    def transcription(self, index: int) -> _RowPlan:
        events = [self.event("speech", self.rng.uniform(*LEAD_IN), digits=True)]
        question = self.pick(QUESTIONS["transcription"])
        return _RowPlan("transcription", self.clip(events), question, events[0].params["text"])

    def open_qa(self, index: int) -> _RowPlan:
        events = self.two_or_one(MIX_EVENTS, pair_probability=0.35)
        if len(events) == 2:
            template = self.pick([ORDER_QA, INVENTORY_QA])
            attributes = {"a": _phrase(events[0]), "b": _phrase(events[1])}
        else:
            template = self.pick([SOURCE_QA, *ATTRIBUTE_QA.get(events[0].name, ())])
            attributes = {**events[0].params, "source": SOURCES[events[0].name].format(**events[0].params)}
        question, answer = self.pick(template.questions), _sentence(self.pick(template.answers).format(**attributes))
        return _RowPlan("open_qa", self.clip(events, LONG_CLIP_PROBABILITY), question, answer)


def split_sizes(size: int) -> dict[str, int]:
    """Rows per split: `size` train rows, 10% validation, 20% test, ~7% compositional test (at least one each)."""
    return {
        "train": size,
        "validation": max(1, size // 10),
        "test": max(1, size // 5),
        "test_compositional": max(1, size // 15),
    }


def _task_counts(num_rows: int, weights: dict[str, float]) -> dict[str, int]:
    """Splits `num_rows` among tasks by weight (largest remainder, so counts sum exactly)."""
    shares = {task: num_rows * weight / sum(weights.values()) for task, weight in weights.items()}
    counts = {task: int(share) for task, share in shares.items()}
    by_remainder = sorted(shares, key=lambda task: counts[task] - shares[task])
    for task in by_remainder[: num_rows - sum(counts.values())]:
        counts[task] += 1
    return counts


def _plan_split(split: str, num_rows: int, seed: int) -> list[_RowPlan]:
    """Draws a split's rows task by task, then shuffles them; one random stream per (seed, split)."""
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    compositional = split == "test_compositional"
    planner = _Planner(rng, compositional)
    counts = _task_counts(num_rows, COMPOSITIONAL_TASK_WEIGHTS if compositional else TASK_WEIGHTS)
    rows = [getattr(planner, task)(index) for task, count in counts.items() for index in range(count)]
    return [rows[i] for i in rng.permutation(len(rows))]


def _record(row_id: str, plan: _RowPlan, samples: np.ndarray) -> dict:
    """A row in PAL's schema."""
    speech = [event.params for event in plan.clip.events if event.name == "speech"]
    return {
        "id": row_id,
        "audio": {"bytes": encode_wav(samples), "path": None},
        "messages": chat_messages(plan.question, plan.answer),
        "task": plan.task,
        "task_type": TASK_TYPES[plan.task],
        "question": plan.question,
        "answer": plan.answer,
        "choices": plan.choices,
        "label": plan.label,
        "events": [event.name for event in plan.clip.events],
        "caption": describe(plan.clip),
        "transcript": speech[0]["text"] if speech else "",
        "language": speech[0]["language"] if speech else "",
        "duration": len(samples) / SAMPLING_RATE,
    }


def build_pal_synth(size: int = DEFAULT_SIZE, seed: int = 0) -> DatasetDict:
    """
    Builds PAL-Synth in memory. The same `(size, seed)` gives byte-identical data.

    Args:
        size: train rows; validation gets `size // 10`, test `size // 5`, test_compositional `size // 15`.
        seed: the random seed (a non-negative integer).

    Returns:
        A `DatasetDict` with splits `train`, `validation`, `test` (i.i.d.) and `test_compositional` (two-event
        clips whose event pairs never occur in the other splits), with `PAL_FEATURES` columns and
        `info.version = PAL_SYNTH_VERSION`.
    """
    if size < 1 or seed < 0:
        raise ValueError(f"size must be ≥ 1 and seed ≥ 0, got size={size}, seed={seed}")
    plans = {split: _plan_split(split, num_rows, seed) for split, num_rows in split_sizes(size).items()}
    requests = [
        e.params["speech"] for rows in plans.values() for row in rows for e in row.clip.events if e.name == "speech"
    ]
    speech = synthesize_speech(requests)
    splits = {}
    for split, rows in plans.items():
        records = [
            _record(f"{split}-{index:06d}", row, render_clip(row.clip, speech))
            for index, row in enumerate(tqdm(rows, desc=f"rendering {split}"))
        ]
        info = DatasetInfo(description="PAL-Synth", version=PAL_SYNTH_VERSION, features=PAL_FEATURES)
        splits[split] = Dataset.from_list(records, info=info)
    return DatasetDict(splits)


def pal_synth_version(dataset: Dataset | DatasetDict) -> str | None:
    """
    The `PAL_SYNTH_VERSION` that built `dataset` (kept by `save_to_disk`, `map`, `filter` and `select`); `None` for a
    PAL-Synth built before versions were recorded, or other data.
    """
    split = next(iter(dataset.values())) if isinstance(dataset, DatasetDict) else dataset
    return None if split.info.version is None else str(split.info.version)


def stage_subset(dataset: Dataset | DatasetDict, stage: int) -> Dataset | DatasetDict:
    """
    The rows of a curriculum stage: stage 1 = classification rows (`task_type == "classification"`), stage 2 =
    classification + closed-ended rows, stage 3 = all rows. Works on a `Dataset` or on every split of a `DatasetDict`.
    """
    if stage not in STAGE_TASK_TYPES:
        raise ValueError(f"stage must be one of {sorted(STAGE_TASK_TYPES)}, got {stage!r}")
    if isinstance(dataset, DatasetDict):
        return DatasetDict({name: stage_subset(split, stage) for name, split in dataset.items()})
    kept = set(STAGE_TASK_TYPES[stage])
    return dataset.filter(
        lambda task_types: [task_type in kept for task_type in task_types],
        input_columns="task_type",
        batched=True,
        keep_in_memory=True,
    )


def summary(dataset: DatasetDict) -> str:
    """Rows per split and task, one line per split."""
    return "\n".join(
        f"{name}: {len(split)} rows; " + ", ".join(f"{task} {n}" for task, n in sorted(Counter(split["task"]).items()))
        for name, split in dataset.items()
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build PAL-Synth and save it with `DatasetDict.save_to_disk`.")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="train rows (other splits scale with it)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args(argv)
    dataset = build_pal_synth(args.size, args.seed)
    dataset.save_to_disk(args.out)
    print(f"saved PAL-Synth to {args.out}\n{summary(dataset)}")


if __name__ == "__main__":
    main()
