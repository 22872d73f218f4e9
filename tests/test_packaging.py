"""The wheel `pip install .` builds: every module of the package, the local `evaluate` metric modules included."""

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
