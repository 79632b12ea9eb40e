#!/usr/bin/env bash
# Run every shipped ablation sweep at its default CPU scale and write each report under
# results/NAME/. The MLflow store is ./mlflow.db in the working directory (not committed).
#   bash scripts/run_all_sweeps.sh [SWEEP ...]     (default: all five)
set -uo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
sweeps=("$@")
[ ${#sweeps[@]} -gt 0 ] || sweeps=(sgu_split init_eps tiny_attn survival_prob ff_mult)
for s in "${sweeps[@]}"; do
  python -m gmlp_ablate.run "$here/sweeps/$s.yaml" || echo "sweep $s: some trials failed (exit $?)"
  python -m analysis.report "$s" --out "$here/results/$s"
done
