#!/usr/bin/env bash
# Run shipped sweeps at their default CPU scale and write each report under results/NAME/
# (a report refuses to overwrite files it did not write: empty the folder first to replace
# a report made elsewhere). The MLflow store is ./mlflow.db in the working directory (not
# committed).
#   bash scripts/run_all_sweeps.sh [SWEEP ...]     (default: the fair baselines at both sizes, scaling and the five ablations)
set -uo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
sweeps=("$@")
[ ${#sweeps[@]} -gt 0 ] || sweeps=(fair_baseline fair_baseline_mlm fair_baseline_large fair_baseline_mlm_large scaling sgu_split tiny_attn init_eps ff_mult survival_prob)
for s in "${sweeps[@]}"; do
  start=$(date +%s)
  python -m gmlp_ablate.run "$here/sweeps/$s.yaml" || echo "sweep $s: some trials failed (exit $?)"
  echo "sweep $s: wall $(( $(date +%s) - start )) s"
  python -m analysis.report "$s" --out "$here/results/$s"
done
