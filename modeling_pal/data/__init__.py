"""
Data for PAL: the PAL-Synth synthetic dataset and converters from common audio datasets into PAL's row schema.

Names are imported lazily, so that `python -m modeling_pal.data.synth` runs the module only once.
"""

import importlib

_EXPORTS = {
    "PAL_FEATURES": "synth",
    "PAL_SYNTH_VERSION": "synth",
    "TASK_TYPES": "synth",
    "build_pal_synth": "synth",
    "chat_messages": "synth",
    "pal_synth_version": "synth",
    "stage_subset": "synth",
    "convert_audiocaps": "converters",
    "convert_audiofolder": "converters",
    "convert_clotho": "converters",
    "convert_esc50": "converters",
    "convert_librispeech": "converters",
    "convert_openaqa": "converters",
    "to_pal_dataset": "converters",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
