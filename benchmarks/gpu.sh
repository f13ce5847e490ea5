#!/usr/bin/env bash
# GPU benchmark: one run on one GPU, under 8 minutes, no network; every input is generated in-process.
#
#   benchmarks/gpu.sh [OUT [OPTIONS]]              # results in OUT/gpu.json and OUT/gpu.md (default gpu-results);
#                                                  # OPTIONS go to bench_gpu.py (--budget-s, --skip-compiled, ...)
#   EXITLAB_REFERENCE=/path/to/early-exit-benchmark benchmarks/gpu.sh   # also time the paper's code
#   EXITLAB_BENCH_TINY=1 benchmarks/gpu.sh /tmp/tiny                     # every row on tiny sizes (CPU check)
#
# PYTHON picks the interpreter (default: python). The rows and how they are measured: benchmarks/bench_gpu.py.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-gpu-results}"
shift || true
py="${PYTHON:-python}"
export PYTHONPATH="$here/../src${PYTHONPATH:+:$PYTHONPATH}"
"$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")'
extra=()
if [[ "${EXITLAB_BENCH_TINY:-0}" == "1" ]]; then extra+=(--tiny --device cpu); fi
exec timeout 470 "$py" "$here/bench_gpu.py" --out "$out" --budget-s "${EXITLAB_BENCH_BUDGET_S:-400}" "${extra[@]}" "$@"
