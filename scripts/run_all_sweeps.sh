#!/usr/bin/env bash
# Run shipped sweeps at their default CPU scale and write each report under results/NAME/
# (a report refuses to overwrite files it did not write: empty the folder first to replace
# a report made elsewhere). The MLflow store is ./mlflow.db in the working directory (not
# committed).
#   bash scripts/run_all_sweeps.sh [SWEEP ...]     (default: the fair baselines at three sizes, scaling and the five ablations)
set -uo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
sweeps=("$@")
[ ${#sweeps[@]} -gt 0 ] || sweeps=(fair_baseline fair_baseline_mlm fair_baseline_large fair_baseline_mlm_large fair_baseline_xl fair_baseline_mlm_xl scaling sgu_split tiny_attn init_eps ff_mult survival_prob)
for s in "${sweeps[@]}"; do
  start=$(date +%s)
  python -m gmlp_ablate.run "$here/sweeps/$s.yaml" || echo "sweep $s: some trials failed (exit $?)"
  echo "sweep $s: wall $(( $(date +%s) - start )) s"
  extra=()  # the fair baselines' reports add every arm against gMLP as an exploratory view
  case "$s" in fair_baseline*) extra=(--baseline attn_dim=null) ;; esac
  python -m analysis.report "$s" "${extra[@]}" --out "$here/results/$s"
done
