#!/usr/bin/env bash
# The GPU run of the efficiency benchmark (`--device cuda --shape paper`), prepared as the one call a session lent a
# GPU machine makes through the `device` tool (benchmarks/README.md, "GPU"):
#
#   here:    bash benchmarks/device_wheels.sh         # the wheels that machine lacks, into .device-wheels/
#   device:  run(command="bash benchmarks/device_paper_run.sh", carry=[".device-wheels"], timeout_s=600)
#   here:    cp <files_at>/efficiency-paper-cuda.json benchmarks/results/
#            .venv/bin/python benchmarks/efficiency.py --report
#
# On the device machine it installs the carried wheels over the image's python3 (which has torch with CUDA), checks
# the versions and the GPU, runs the smoke benchmark on CUDA through the fork server (a failure there, e.g. CUDA in a
# forked child, falls back to one interpreter per point for the paper run), then the paper-shape run until the
# budget is spent. Under $OUT: log.txt, env.txt, efficiency-smoke-cuda.json and efficiency-paper-cuda.json (rewritten
# after every point: a run cut short keeps what it measured, with "complete": false).
# Rehearse it here first (no GPU, a few seconds of paper shapes; wheels for this interpreter, see device_wheels.sh):
#   OUT=/tmp/out DEVICE=cpu PAPER_ARGS="--na 125 --variants lal" PYTHON=<a python with torch> bash <this script>
set -uo pipefail
: "${OUT:?run this on the device machine, where \$OUT is set}"
BUDGET=${BUDGET:-540}  # seconds for the whole script: the call's 600 s limit less the transfers
PYTHON=${PYTHON:-python3}
DEPS=${DEPS:-/tmp/pal-device-deps}
DEVICE=${DEVICE:-cuda}
read -r -a paper_args <<<"${PAPER_ARGS:-}"
start=$SECONDS

main() {  # the whole run, not indented because it holds a heredoc
"$PYTHON" -m pip install --quiet --no-index --no-deps --upgrade --target "$DEPS" .device-wheels/*.whl || exit 1
# NVML answers torch.cuda.is_available() without initialising CUDA, so the fork server stays safe to fork
export PYTHONPATH="$DEPS:$PWD" PYTHONUNBUFFERED=1 PYTORCH_NVML_BASED_CUDA_CHECK=1 HF_HUB_OFFLINE=1 DEVICE
"$PYTHON" - <<'EOF' | tee "$OUT/env.txt"
import torch, transformers, modeling_pal  # noqa: F401  (modeling_pal: soundfile, soxr and 5.24 were carried)

print("python", __import__("sys").version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "transformers", transformers.__version__, "from", transformers.__file__)
assert transformers.__version__.startswith("5.24"), "the carried transformers 5.24 was not picked up"
assert torch.cuda.is_available() or __import__("os").environ["DEVICE"] != "cuda", "torch sees no CUDA device"
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(0), torch.cuda.get_device_properties(0).total_memory // 2**30, "GiB")
EOF
[ "${PIPESTATUS[0]}" = 0 ] || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv >>"$OUT/env.txt" || true

launcher=exec
smoke="$OUT/efficiency-smoke-$DEVICE.json"
if timeout 150 "$PYTHON" benchmarks/efficiency.py --smoke --device "$DEVICE" --launcher forkserver --no-docs \
    --output "$smoke" && "$PYTHON" -c "import json, sys; points = json.load(open(sys.argv[1]))['points']; \
sys.exit(any(p['status'] != 'ok' for p in points))" "$smoke"; then
    launcher=forkserver
else
    echo "smoke run on $DEVICE through the fork server failed (see above): the paper run starts one interpreter per point"
fi

left=$((BUDGET - (SECONDS - start)))
if [ "$left" -lt 60 ]; then
    echo "only $left s left of $BUDGET: no paper run" && exit 1
fi
timeout "$left" "$PYTHON" benchmarks/efficiency.py --device "$DEVICE" --shape paper --launcher "$launcher" --no-docs \
    --point-timeout 150 --output "$OUT/efficiency-paper-$DEVICE.json" "${paper_args[@]}"
status=$?
echo "paper run: exit $status after $((SECONDS - start)) s of $BUDGET (launcher $launcher)"
exit "$status"
}

# a pipeline, not `exec > >(tee …)`: the script ends only when log.txt holds every line
main 2>&1 | tee "$OUT/log.txt"
exit "${PIPESTATUS[0]}"
