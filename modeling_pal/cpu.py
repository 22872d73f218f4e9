"""
Training and evaluating on CPU: child processes that preload tcmalloc.

glibc's malloc hands every large freed block (activations, gradients, logits) back to the operating system and
page-faults it in again on the next step; tcmalloc keeps it for reuse (PyTorch's CPU performance guide recommends it).
On this project's 2-core machines that makes the efficiency benchmark's training steps 10-20 % faster and the small
components' pretraining steps 5-20 % faster (docs/benchmarks.md, *The malloc*).
"""

from __future__ import annotations

import ctypes.util
import os
from collections.abc import Mapping

# tcmalloc prints a line to stderr for every allocation above this many bytes (default 1 GiB): PLITS logits are larger
REPORT_THRESHOLD_VARIABLE = "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"


def tcmalloc_library() -> str | None:
    """tcmalloc's shared library (Debian's `libtcmalloc-minimal4`: `libtcmalloc_minimal.so.4`), None if missing."""
    return ctypes.util.find_library("tcmalloc_minimal") or ctypes.util.find_library("tcmalloc")


def preload_environment(library: str | None, environment: Mapping[str, str] | None = None) -> dict[str, str]:
    """
    A copy of `environment` (default: `os.environ`) for child processes that preload `library` before any other
    shared library (`LD_PRELOAD`, kept entries after it), with tcmalloc's large-allocation reports off. `library=None`
    returns the copy unchanged.
    """
    result = dict(os.environ if environment is None else environment)
    if library:
        result["LD_PRELOAD"] = " ".join(filter(None, [library, result.get("LD_PRELOAD")]))
        result[REPORT_THRESHOLD_VARIABLE] = str(2**40)
    return result
