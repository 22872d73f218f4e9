#!/usr/bin/env bash
# Downloads, here, the wheels the GPU machine of the `device` tool lacks for `benchmarks/device_paper_run.sh`, into
# .device-wheels/ (git-ignored; carried with `carry=[".device-wheels"]`). That machine reaches no package registry and
# runs its own image's python3 (3.12, torch with CUDA, an older transformers, no soundfile / soxr): this project needs
# transformers 5.24 (`cache=`), `import modeling_pal` needs soundfile (+ cffi, pycparser) and soxr, and transformers
# 5.24 checks regex's version at import. Versions are those of this project's venv (built from requirements.txt).
#
#   bash benchmarks/device_wheels.sh            # wheels for CPython 3.12 (the device image's, as of 2026-11)
#   PYTHON_VERSION=3.11 bash benchmarks/device_wheels.sh   # for another interpreter
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
DEST=${DEST:-.device-wheels}
PIP=${PIP:-.venv/bin/pip}
ABI=cp${PYTHON_VERSION/./}

packages=()
for name in transformers soundfile soxr cffi pycparser regex; do
    version=$("$PIP" show "$name" 2>/dev/null | sed -n 's/^Version: //p' || true)  # set -e: a failing pip show would exit silently
    [ -n "$version" ] || { echo "$name is not installed in the venv: run make setup first" >&2; exit 1; }
    packages+=("$name==$version")
done
rm -rf "$DEST"
"$PIP" download --quiet --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" --implementation cp \
    --abi "$ABI" --abi abi3 --abi none --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any --dest "$DEST" "${packages[@]}"
echo "wrote $DEST for CPython $PYTHON_VERSION: ${packages[*]}"
