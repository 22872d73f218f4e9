"""modeling_pal.cpu: child processes (the demo's stages, the benchmark's workers) that preload tcmalloc."""

import subprocess
import sys

from modeling_pal.cpu import REPORT_THRESHOLD_VARIABLE, preload_environment, tcmalloc_library


def test_preload_environment_puts_the_library_first_and_keeps_the_rest():
    environment = preload_environment("libx.so", {"LD_PRELOAD": "liby.so", "HF_HUB_OFFLINE": "1"})
    assert environment["LD_PRELOAD"] == "libx.so liby.so"
    assert environment["HF_HUB_OFFLINE"] == "1"
    assert int(environment[REPORT_THRESHOLD_VARIABLE]) >= 2**40
    assert preload_environment("libx.so", {})["LD_PRELOAD"] == "libx.so"
    assert preload_environment(None, {"HF_HUB_OFFLINE": "1"}) == {"HF_HUB_OFFLINE": "1"}


def test_a_child_started_with_it_runs_on_tcmalloc():
    library = tcmalloc_library()
    assert library is not None, "`make setup` installs Debian's libtcmalloc-minimal4"
    maps = subprocess.run(
        [sys.executable, "-c", "print(open('/proc/self/maps').read())"],
        env=preload_environment(library),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "libtcmalloc" in maps
