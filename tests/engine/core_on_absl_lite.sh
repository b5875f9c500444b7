#!/usr/bin/env bash
# The engine must build on compat/absl-lite (a GPU machine without Abseil): every source compiles
# (syntax only) with those headers first in the include path and pulls in no real Abseil header
# (which this machine has, and the GPU machine may not). In "core" mode no nlohmann-json header
# either: the compute core builds where that is missing too; in "engine" mode (the whole engine
# and its CLI) nlohmann-json is allowed, as the GPU check may carry it. Sources are checked in
# parallel, one compiler per core.
#   core_on_absl_lite.sh COMPILER SOURCE_DIR "EXTRA_FLAGS" core|engine SOURCE...
set -euo pipefail
export compiler=$1 root=$2 extra=$3 foreign_pattern='/absl/|nlohmann'
[ "$4" = engine ] && foreign_pattern='/absl/'
mode=$4
shift 4
# A source list CMake failed to find (a library's sources moved to an object library) must not
# pass as a check of nothing.
for src in "$@"; do
  [ -f "$src" ] || { echo "not a source file: $src"; exit 1; }
done
[ $# -ge 10 ] || { echo "only $# sources given: the $mode's sources are missing"; exit 1; }

check() {  # one source: a real syntax check (-M alone would only preprocess), deps aside
  local src=$1 deps
  deps=$(mktemp)
  # shellcheck disable=SC2086
  if ! "$compiler" -std=c++20 -fsyntax-only -fopenmp -MD -MF "$deps" \
      -I"$root/compat/absl-lite" -I"$root" $extra "$src"; then
    echo "FAILED to compile on absl-lite: $src"; rm -f "$deps"; return 1
  fi
  local foreign
  foreign=$(tr ' \\' '\n\n' < "$deps" | grep -E "$foreign_pattern" | grep -v "compat/absl-lite" || true)
  rm -f "$deps"
  if [ -n "$foreign" ]; then
    echo "$src includes headers absl-lite does not stand in for:"
    echo "$foreign" | sed 's/^/  /'
    return 1
  fi
}
export -f check

if printf '%s\n' "$@" | xargs -P "$(nproc)" -I{} bash -c 'check "$1"' _ {}; then
  echo "the engine's $mode ($# sources) builds on absl-lite"
else
  exit 1
fi
