#!/usr/bin/env bash
# The engine's compute core must build on compat/absl-lite (a GPU machine without Abseil or
# nlohmann-json): every core source compiles (syntax only) with those headers first in the
# include path, and pulls in no real Abseil or JSON header (which this machine has, and the GPU
# machine may not).
#   core_on_absl_lite.sh COMPILER SOURCE_DIR "EXTRA_FLAGS" SOURCE...
set -euo pipefail
compiler=$1 root=$2 extra=$3
shift 3
status=0
for src in "$@"; do
  # shellcheck disable=SC2086
  deps=$("$compiler" -std=c++20 -fsyntax-only -fopenmp -M -I"$root/compat/absl-lite" -I"$root" \
    $extra "$src") || { echo "FAILED to compile on absl-lite: $src"; status=1; continue; }
  foreign=$(echo "$deps" | tr ' \\' '\n\n' | grep -E '/absl/|nlohmann' | grep -v "compat/absl-lite" || true)
  if [ -n "$foreign" ]; then
    echo "$src includes headers absl-lite does not stand in for:"
    echo "$foreign" | sed 's/^/  /'
    status=1
  fi
done
[ $status -eq 0 ] && echo "the engine core ($# sources) builds on absl-lite alone"
exit $status
