#!/usr/bin/env bash
# The GPU check, in one call on the lent GPU machine (CUDA + CMake there, no service libraries):
# builds kernels/ and the GPU tests with nothing else, runs `ctest -L gpu`, then the GPU
# benchmarks, and prints one short table last. Full logs go under $OUT (default ./gpu-out).
#   bash tests/gpu/run.sh
# real_model_gpu_test and the CLI fine-tune (tests/gpu/cli_finetune.sh) train stories260K, and
# the CLI needs nlohmann-json's headers: the lent machine has neither (only the working tree
# travels). Stage both in the git-ignored gpu-carry/ first and carry that folder with the call:
#   mkdir -p gpu-carry/include && cp -r --no-preserve=mode ../shared/models/stories260K gpu-carry/ \
#     && cp -r --no-preserve=mode /usr/include/nlohmann gpu-carry/include/
# then call with carry: ["gpu-carry"].
set -uo pipefail
cd "$(dirname "$0")/../.."
if [ -z "${QLORAD_TEST_MODELS:-}" ]; then
  for d in gpu-carry ../shared/models; do
    [ -f "$d/stories260K/stories260K.bin" ] && { export QLORAD_TEST_MODELS="$(cd "$d" && pwd)"; break; }
  done
fi
out="${OUT:-$(pwd)/gpu-out}"
# CMake finds nvcc on PATH only: a toolkit in its usual place would otherwise build no CUDA and
# run no GPU test.
command -v nvcc > /dev/null || { [ -x /usr/local/cuda/bin/nvcc ] && export PATH="/usr/local/cuda/bin:$PATH"; }
mkdir -p "$out"
jobs="$(nproc 2>/dev/null || echo 4)"
arch="${CUDA_ARCH:-90}"

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.max.sm,driver_version --format=csv
  nvcc --version | tail -2
  cmake --version | head -1
  echo "libraries the engine needs (present?):"
  for h in absl/status/status.h gtest/gtest.h nlohmann/json.hpp sentencepiece_processor.h cblas.h benchmark/benchmark.h; do
    found=$(ls /usr/include/$h /usr/local/include/$h /usr/include/*/$h 2>/dev/null | head -1)
    echo "  $h: ${found:-missing}"
  done
} > "$out/machine.txt" 2>&1

status=0
# On the GPU machine a test that finds no device fails (tests/gpu/gpu_check.h); 0 lets a
# machine without one build and skip.
export QLORAD_REQUIRE_GPU="${QLORAD_REQUIRE_GPU:-1}"
# Device time is scarce: every phase is timed, and a benchmark that would start after
# $GPU_CHECK_SECONDS (default 400) is skipped with a note, so the table always comes back.
start=$(date +%s)
budget="${GPU_CHECK_SECONDS:-400}"
# Nothing runs past $GPU_CHECK_HARD_SECONDS (default 540, under the lent machine's 600 s call):
# each benchmark's limit is cut to what is left, so the table below always gets printed.
hard="${GPU_CHECK_HARD_SECONDS:-540}"
phase() { echo "$(( $(date +%s) - start ))s $*" >> "$out/phases.txt"; }
time_left() { [ $(( $(date +%s) - start )) -lt "$budget" ] || { phase "skipped (over budget): $*"; return 1; }; }
bench() {  # bench LIMIT_SECONDS COMMAND...: runs a benchmark into bench.log within the budget
  local limit=$1; shift
  time_left "$*" || return 0
  local left=$(( hard - ($(date +%s) - start) - 10 ))
  [ "$limit" -le "$left" ] || limit=$left
  [ "$limit" -gt 5 ] || { phase "skipped (no time left): $*"; return 0; }
  phase "start $*"
  local rc=0
  timeout -k 10 "$limit" "$@" >> "$out/bench.log" 2>&1 || rc=$?
  case $rc in
    0) ;;
    77) echo "SKIPPED (no CUDA device): $*" >> "$out/bench.log" ;;
    *) echo "FAILED (exit $rc): $*" >> "$out/bench.log"; status=4 ;;
  esac
}
: > "$out/bench.log"
: > "$out/phases.txt"
phase "configure"
# The engine too (its CUDA device test) when Abseil and nlohmann-json are there; else kernels.
scope=engine
json_dir=""
[ -f gpu-carry/include/nlohmann/json.hpp ] && json_dir="$(pwd)/gpu-carry/include"
cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DQLORAD_GPU_CHECK=ON -DQLORAD_USE_BLAS=OFF \
  -DQLORAD_NLOHMANN_INCLUDE_DIR="$json_dir" \
  -DCMAKE_CUDA_ARCHITECTURES="$arch" > "$out/configure.log" 2>&1 || {
  scope=kernels
  rm -rf build-gpu
  cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DQLORAD_KERNELS_ONLY=ON -DQLORAD_USE_BLAS=OFF \
    -DCMAKE_CUDA_ARCHITECTURES="$arch" >> "$out/configure.log" 2>&1 || status=1
}
echo "build scope: $scope" >> "$out/machine.txt"
if [ $status -eq 0 ] && ! grep -q "qlorad: CUDA kernels ON" "$out/configure.log"; then
  echo "CMake found no CUDA compiler: no kernel or GPU test would be built" >> "$out/configure.log"
  status=1
fi
grep "qlorad: GPU check" "$out/configure.log" >> "$out/machine.txt"  # absl-lite? engine core only?
if [ $status -eq 0 ]; then
  phase "build ($scope)"
  # A first build on a fresh machine (every CUDA kernel for sm_$arch): capped, so that a stuck
  # build still leaves time to print why.
  rc=0
  timeout -k 10 330 cmake --build build-gpu -j "$jobs" > "$out/build.log" 2>&1 || rc=$?
  [ $rc -eq 0 ] || status=2
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && echo "the build ran past 330 s and was stopped" >> "$out/build.log"
  # The whole engine and its CLI, where nlohmann-json was found or carried: apart, and never
  # fatal (the CLI fine-tune then reports that it was not built).
  if [ $status -eq 0 ] && grep -q "engine core only OFF" "$out/configure.log"; then
    phase "build qlora-engine"
    echo "== qlora-engine" >> "$out/build.log"
    timeout -k 10 150 cmake --build build-gpu -j "$jobs" --target qlora-engine >> "$out/build.log" 2>&1 ||
      echo "qlora-engine did not build (exit $?)" >> "$out/build.log"
  fi
fi
if [ $status -eq 0 ]; then
  phase "ctest -L gpu"
  # Each test takes seconds; a kernel that never returns costs 90 s, and all of them 300 s.
  # -V: what passing tests measured (errors against the CPU, the fine-tune's losses) is kept.
  # At most 300 s, and never past the hard end less 40 s for the summary.
  cap=$(( hard - ($(date +%s) - start) - 40 ))
  [ $cap -le 300 ] || cap=300
  if [ $cap -gt 30 ]; then
    (cd build-gpu && timeout -k 10 $cap ctest -L gpu -V --timeout 90 --no-tests=error) > "$out/ctest.log" 2>&1 || status=3
  else
    phase "ctest skipped: no time left after the build"; status=3
  fi
  # The offline CLI's fine-tune on the card against the CPU, where the whole engine was built
  # (nlohmann-json found or carried) and the model is here.
  # Not on a machine with no card where none is required (the GPU tests skip there too). Its
  # files stay in build-gpu/cli-work: $OUT brings back 8 files at most.
  if [ "$QLORAD_REQUIRE_GPU" != 1 ] && ! nvidia-smi -L > /dev/null 2>&1; then
    echo "not run: no GPU here" > "$out/cli.log"
  elif [ ! -x build-gpu/engine/qlora-engine ]; then
    echo "not run: qlora-engine was not built (nlohmann-json missing, or see build.log)" > "$out/cli.log"
  elif [ -z "${QLORAD_TEST_MODELS:-}" ]; then
    echo "not run: no stories260K (stage gpu-carry/, see the top of this script)" > "$out/cli.log"
  elif ! time_left "cli"; then
    echo "not run: over the time budget" > "$out/cli.log"
  else
    phase "cli fine-tune"
    rc=0
    timeout -k 5 120 bash tests/gpu/cli_finetune.sh build-gpu/engine/qlora-engine \
      "$QLORAD_TEST_MODELS" build-gpu/cli-work > "$out/cli.log" 2>&1 || rc=$?
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && echo "cli fine-tune: stopped after 120 s" >> "$out/cli.log"
    [ $rc -eq 0 ] || [ $status -ne 0 ] || status=5
  fi
  gpu=build-gpu/tests/gpu
  bench 60 $gpu/nf4_dequant_gpu_bench
  bench 60 $gpu/flash_attention_gpu_bench
  bench 60 $gpu/lora_kernels_gpu_bench
  if [ -x $gpu/train_step_gpu_bench ]; then
    # The whole 7B shape, ours (bf16 activations) and PyTorch + PEFT in bf16, each with and
    # without gradient checkpointing; ours with float32 activations; one decoder layer; then
    # ours with GEMM attention.
    # --profile: one more step with GPU time by operation (a second JSON line).
    bench 150 $gpu/train_step_gpu_bench --layers 32 --profile
    bench 150 python3 bench/torch_lora_step_gpu.py --layers 32 --checkpointing
    bench 150 $gpu/train_step_gpu_bench --layers 32 --no-checkpointing --profile
    bench 150 python3 bench/torch_lora_step_gpu.py --layers 32
    bench 150 $gpu/train_step_gpu_bench --layers 32 --no-checkpointing --f32-activations
    bench 60 $gpu/train_step_gpu_bench --layers 1
    bench 60 python3 bench/torch_lora_step_gpu.py --layers 1
    bench 150 $gpu/train_step_gpu_bench --layers 32 --gemm-attention
  fi
fi
phase "done"

echo "== machine"; cat "$out/machine.txt"
case $status in
  1) echo "== configure FAILED"; tail -30 "$out/configure.log" ;;
  2) echo "== build FAILED"; grep -E "error|Error" "$out/build.log" | head -30; tail -5 "$out/build.log" ;;
esac
[ -f "$out/ctest.log" ] && {
  echo "== ctest -L gpu (models from ${QLORAD_TEST_MODELS:-nowhere})"
  # Each test's verdict (a crash or a timeout included), the failed checks (the first 20), the
  # summary, and the real model's lines (CPU vs card).
  grep -E "^ *[0-9]+/[0-9]+ Test +#" "$out/ctest.log"
  grep -E "CHECK failed|FAILED|SKIPPED|Exception|Timeout|SEGFAULT" "$out/ctest.log" | head -20
  grep -E "tests passed|tests failed" "$out/ctest.log"
  grep -E "greedy|NF4 base|fine-tune," "$out/ctest.log" | head -8
}
[ -f "$out/cli.log" ] && { echo "== CLI fine-tune, CPU vs card"; tail -8 "$out/cli.log"; }
# The results (JSON lines, the dequantization bench's table rows, skips) and each failure with the four lines before it; the whole
# log, warnings included, stays in bench.log under $out.
[ -s "$out/bench.log" ] && {
  echo "== benchmarks"
  grep -E '^\{|^\||^device|SKIPPED' "$out/bench.log" | grep -v '"ops"'
  grep -B4 'FAILED' "$out/bench.log"
}
# Each op profile as a short table: the ten kinds of work with the most GPU time.
grep '"ops"' "$out/bench.log" 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    p = json.loads(line)
    print("== op profile: step %.1f ms, GPU busy %.1f ms" % (p["profiled_step_ms"], p["gpu_busy_ms"]))
    for o in p["ops"][:10]:
        print("  %-40s %6d calls %9.2f ms %5.1f%%" % (o["op"], o["calls"], o["ms"], 100 * o["share"]))
' 2>&1
# The issue's targets, read off the lines above: the bf16 dequantization at >= 70% of the copy
# bandwidth, and each 7B step (with and without checkpointing) faster than PEFT's at under half
# its peak memory. Ours is the drop in free device memory (everything, the cuBLAS workspace
# included); PEFT's what torch reserved (the like figure) and what it allocated (the smaller):
# "met" asks for under half of the smaller.
python3 - "$out/bench.log" <<'PY' 2>&1
import json, re, sys
lines = open(sys.argv[1]).read().splitlines()
print("== targets")
for l in lines:
    # The shapes larger than the L2 cache (60 MB) are judged; 4096 x 4096 fits it.
    m = re.match(r"\| dequant \| NF4\+DQ -> bf16 \[(\d+) x (\d+)\] .*\| (\d+)% \|", l)
    if m and int(m.group(1)) * int(m.group(2)) >= 11008 * 4096:
        print("  dequant to bf16 [%s x %s]: %s%% of copy bandwidth (target 70%%): %s"
              % (m.group(1), m.group(2), m.group(3), "met" if int(m.group(3)) >= 70 else "NOT met"))
ours, peft = {}, {}
for l in lines:
    if not l.startswith("{"):
        continue
    try:
        j = json.loads(l)
    except ValueError:
        continue
    if j.get("layers") != 32:
        continue
    if j.get("peer") == "torch+peft bf16":
        peft[j["checkpointing"]] = j
    elif ("tokens_per_s" in j and j.get("activations") == "bf16" and j.get("attention") == "flash"
          and "ops" not in j):
        ours.setdefault(j["checkpointing"], j)
for ck in (True, False):
    o, p = ours.get(ck), peft.get(ck)
    if not o or not p:
        print("  7B step, checkpointing %s: missing (ours %s, PEFT %s)" % (ck, bool(o), bool(p)))
        continue
    speed = o["tokens_per_s"] / p["tokens_per_s"]
    mem = o["gpu_used_gib"] / max(p["peak_gpu_gib"], 1e-9)
    print("  7B step, checkpointing %s: %.0f vs %.0f tokens/s (x%.2f), %.1f GiB vs %.1f "
          "allocated (%.2f) / %.1f reserved, MFU %s: %s"
          % (ck, o["tokens_per_s"], p["tokens_per_s"], speed, o["gpu_used_gib"],
             p["peak_gpu_gib"], mem, p.get("peak_gpu_reserved_gib", float("nan")), o.get("mfu"),
             "met" if speed > 1 and mem < 0.5 else "NOT met"))
PY
echo "== phases (seconds since start)"; cat "$out/phases.txt"
exit $status
