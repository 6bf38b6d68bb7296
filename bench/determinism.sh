#!/usr/bin/env bash
# The check matrix of the reproducibility guarantee, on the default data.
#
# For each configuration below, clones REV (default HEAD) of this repository into
# bench/scratch/determinism/<config>/ (no DVC cache, no DVC remote: a newcomer's fresh
# clone), runs `dvc repro` there under that configuration's environment, and reports
# whether `git status` stays clean and the md5 of the dvc.lock it leaves. Every
# configuration must leave the committed dvc.lock unchanged, hence the same md5.
# The configurations vary what differs between machines: the thread count, the
# OpenBLAS kernel, numpy's SIMD level and numba's target CPU.
#
# Usage: bench/determinism.sh [REV] [CONFIG ...]     (default: all configurations)
# Cost: one full pipeline per configuration, about 3-5 minutes each on 2 cores.
# The clones use this checkout's .venv (make setup; or the one named by VENV) instead
# of building their own.
# Exit status: 0 when every clone is clean, 1 otherwise.
set -euo pipefail

repo=$(git rev-parse --show-toplevel)
rev=${1:-HEAD}
shift || true
venv=${VENV:-$repo/.venv}/bin
scratch=$repo/bench/scratch/determinism
noavx512="X86_V4 AVX512_ICL AVX512_SPR"

declare -A configs=(
  [t1]="IMMUNE_AGING_THREADS=1"
  [t2]="IMMUNE_AGING_THREADS=2"
  [t1-skylakex]="IMMUNE_AGING_THREADS=1 OPENBLAS_CORETYPE=SkylakeX"
  [t2-sandybridge]="IMMUNE_AGING_THREADS=2 OPENBLAS_CORETYPE=Sandybridge OPENBLAS_NUM_THREADS=2"
  [t2-noavx512]="IMMUNE_AGING_THREADS=2 OPENBLAS_CORETYPE=Haswell NUMBA_CPU_NAME=generic"
)
order=(t1 t2 t1-skylakex t2-sandybridge t2-noavx512)
[ $# -gt 0 ] && order=("$@")

[ -x "$venv/dvc" ] || { echo "error: $venv/dvc missing: run make setup first" >&2; exit 2; }
sha=$(git -C "$repo" rev-parse "$rev")
mkdir -p "$scratch"
summary=$scratch/summary.txt
printf '# %s  rev %s  %s\n' "$(date -u +%FT%TZ)" "${sha:0:12}" "$(nproc) cores" | tee "$summary"
printf '%-16s %8s  %-32s  %s\n' config seconds "dvc.lock md5" "git status" | tee -a "$summary"
status=0
for name in "${order[@]}"; do
  [ -n "${configs[$name]+x}" ] || { echo "error: unknown configuration $name" >&2; exit 2; }
  clone=$scratch/$name
  rm -rf "$clone"
  git clone -q "$repo" "$clone"
  git -C "$clone" checkout -q "$sha"
  env_args=(${configs[$name]})
  [ "$name" = t2-noavx512 ] && env_args+=("NPY_DISABLE_CPU_FEATURES=$noavx512")
  start=$(date +%s)
  if ! (cd "$clone" && env -u OPENBLAS_NUM_THREADS -u OMP_NUM_THREADS \
      PATH="$venv:$PATH" PYTHONPATH="$clone/src" IMMUNE_AGING_LOG_DIR="$clone/logs" \
      "${env_args[@]}" "$venv/dvc" repro >"$scratch/$name.log" 2>&1); then
    echo "$name: dvc repro failed, see $scratch/$name.log" | tee -a "$summary"
    status=1
    continue
  fi
  seconds=$(($(date +%s) - start))
  changed=$(git -C "$clone" status --porcelain | tr '\n' ' ')
  lock=$(md5sum "$clone/dvc.lock" | cut -c1-32)
  printf '%-16s %8s  %-32s  %s\n' "$name" "$seconds" "$lock" "${changed:-clean}" | tee -a "$summary"
  [ -z "$changed" ] || status=1
done
locks=$(awk 'NR > 2 && NF >= 3 {print $3}' "$summary" | sort -u | wc -l)
echo "distinct dvc.lock files: $locks" | tee -a "$summary"
[ "$locks" -le 1 ] || status=1
exit $status
