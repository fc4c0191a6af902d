#!/usr/bin/env bash
# On a GPU machine with torch preinstalled and no network: build the CUDA op library,
# run the test suite on the GPU, then every benchmark area through `python -m panther bench`,
# writing logs and JSON to $1.
#
#   bash benchmarks/gpu_all.sh OUT_DIR [pytest -k expression]
# BENCHMARKS=linear,conv selects areas; BENCH_TIMEOUT caps each one (seconds).
# REPORT=PAGE.md finishes by regenerating that page (and its plots in docs/img beside it) with
# `python -m benchmarks.report` from OUT_DIR's parent folder, which holds one folder per machine:
#   REPORT=BENCHMARKS.md bash benchmarks/gpu_all.sh benchmarks/results/h200
set -uo pipefail
out=${1:?usage: benchmarks/gpu_all.sh OUT_DIR [pytest -k expression]}
select=${2:-}
mkdir -p "$out"
out=$(cd "$out" && pwd)  # paths given relative to the caller's folder
report=${REPORT:+$(realpath -m "$REPORT")}
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PANTHER_BUILD_CUDA=1 MAX_JOBS=${MAX_JOBS:-16}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$(python3 -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')}
py=python3
# Build with the compiler torch was built with (the system g++). On the lent H100/H200
# machines the first g++ that Python's build config links with (/opt/gcc) produces
# libraries whose C++ exceptions crash the process instead of raising RuntimeError.
if [ -x /usr/bin/g++ ]; then export CC=/usr/bin/gcc CXX=/usr/bin/g++; fi

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/device.txt"
$py -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)' | tee -a "$out/device.txt"

start=$(date +%s)
$py setup.py build_ext --inplace > "$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
echo "build: $(( $(date +%s) - start )) s"

status=0
$py -m pytest -q -p no:cacheprovider tests ${select:+-k "$select"} 2>&1 | tee "$out/gpu_tests.log" | tail -25
status=${PIPESTATUS[0]}

for bench in benchmarks/bench_*.py; do
  name=$(basename "$bench" .py)
  area=${name#bench_}
  if [ -n "${BENCHMARKS:-}" ] && [[ ",$BENCHMARKS," != *",$area,"* ]]; then continue; fi
  if [ "$area" = tuner ]; then echo "== $name: CPU only, skipped"; continue; fi
  echo "== $name"
  timeout "${BENCH_TIMEOUT:-300}" $py -m panther bench "$area" --device cuda --out "$out" > "$out/$name.log" 2>&1 \
    || { echo "$name failed"; tail -20 "$out/$name.log"; status=1; }
  grep -v '^$' "$out/$name.log" | head -60
done

if [ -n "$report" ]; then
  $py -m benchmarks.report --results "$(dirname "$out")" --out "$report" || status=1
fi
exit $status
