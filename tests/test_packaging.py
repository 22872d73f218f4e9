"""
The wheel `pip install .` builds: every module of the package, the local `evaluate` metric modules included; the
imports of the files checkpoints ship for `trust_remote_code` users; and
`make system-deps`, which installs the Debian packages that are missing.
"""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["setup.py", "README.md", "MANIFEST.in", "requirements.txt", "modeling_pal", "examples"]


def test_the_wheel_ships_every_module_and_metric(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, source)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(source)],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "would be ignored" not in build.stderr, build.stderr[-2000:]
    (wheel,) = tmp_path.glob("modeling_pal-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    modules = {path.relative_to(ROOT).as_posix() for path in (ROOT / "modeling_pal").rglob("*.py")}
    assert modules <= shipped, sorted(modules - shipped)
    assert {m for m in modules if "/metrics/" in m}, "the local evaluate metric modules"


def stub(path: Path, script: str) -> None:
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)


def test_system_deps_installs_what_a_non_root_path_lacks(tmp_path):
    """
    A PATH without /sbin (a non-root user's), ffmpeg/espeak-ng/sox present, java absent, a python3 without ensurepip:
    apt-get (a stub) must be asked for Java and python3-venv, and for tcmalloc only if /sbin/ldconfig lacks it.
    """
    bin_dir, log = tmp_path / "bin", tmp_path / "apt.log"
    bin_dir.mkdir()
    for tool in ("cat", "cut", "grep", "id", "sha1sum"):  # what the recipe and the Makefile's $(shell) call
        (bin_dir / tool).symlink_to(shutil.which(tool))
    for tool in ("ffmpeg", "espeak-ng", "sox"):
        stub(bin_dir / tool, "exit 0")
    stub(bin_dir / "python3", "exit 1")
    stub(bin_dir / "sudo", 'exec "$@"')
    stub(bin_dir / "apt-get", f'echo "$*" >> {log}')
    make = [shutil.which("make"), "-s", "-C", str(ROOT), "system-deps"]
    subprocess.run(make, env={"PATH": str(bin_dir)}, capture_output=True, text=True, check=True)
    installed = log.read_text().splitlines()[-1].split()
    assert {"default-jre-headless", "python3-venv"} <= set(installed)
    assert not {"ffmpeg", "espeak-ng", "sox"} & set(installed)
    has_tcmalloc = (
        "libtcmalloc_minimal" in subprocess.run(["/sbin/ldconfig", "-p"], capture_output=True, text=True).stdout
    )
    assert ("libtcmalloc-minimal4" in installed) != has_tcmalloc


def test_the_remote_code_model_files_need_only_torch_and_transformers():
    """`trust_remote_code` users without the package: Transformers refuses a shipped file whose imports (outside
    `try` blocks) are not installed, so the model's files may import nothing beyond what Transformers needs."""
    from transformers.dynamic_module_utils import get_imports

    for name in ("modeling_pal.py", "configuration_pal.py", "pipeline_pal.py"):
        third_party = set(get_imports(ROOT / "modeling_pal" / name)) - set(sys.stdlib_module_names)
        assert third_party <= {"torch", "transformers", "huggingface_hub"}, (name, third_party)
