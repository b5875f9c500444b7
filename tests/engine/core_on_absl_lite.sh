#!/usr/bin/env bash
# The engine must build on compat/absl-lite (a GPU machine without Abseil): every source compiles
# (syntax only) with those headers first in the include path and pulls in no real Abseil header
# (which this machine has, and the GPU machine may not). In "core" mode no nlohmann-json header
# either: the compute core builds where that is missing too; in "engine" mode (the whole engine
# and its CLI) nlohmann-json is allowed, as the GPU check may carry it.
#   core_on_absl_lite.sh COMPILER SOURCE_DIR "EXTRA_FLAGS" core|engine SOURCE...
set -euo pipefail
compiler=$1 root=$2 extra=$3 mode=$4
shift 4
foreign_pattern='/absl/|nlohmann'
[ "$mode" = engine ] && foreign_pattern='/absl/'
status=0
deps_file=$(mktemp)
trap 'rm -f "$deps_file"' EXIT
for src in "$@"; do
  # A real syntax check (-M alone would only preprocess), its dependencies written aside.
  # shellcheck disable=SC2086
  "$compiler" -std=c++20 -fsyntax-only -fopenmp -MD -MF "$deps_file" -I"$root/compat/absl-lite" \
    -I"$root" $extra "$src" || { echo "FAILED to compile on absl-lite: $src"; status=1; continue; }
  deps=$(cat "$deps_file")
  foreign=$(echo "$deps" | tr ' \\' '\n\n' | grep -E "$foreign_pattern" | grep -v "compat/absl-lite" || true)
  if [ -n "$foreign" ]; then
    echo "$src includes headers absl-lite does not stand in for:"
    echo "$foreign" | sed 's/^/  /'
    status=1
  fi
done
[ $status -eq 0 ] && echo "the engine's $mode ($# sources) builds on absl-lite"
exit $status
