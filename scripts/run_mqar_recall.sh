#!/usr/bin/env bash
# gMLP vs aMLP vs Transformer on MQAR for 4 and 8 key-value pairs (any others as arguments): one experiment and one
# report (results/mqar_recall_kvK/) per value. MLflow store: ./mlflow.db (not committed).
set -uo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
for k in "${@:-4 8}"; do
  for kk in $k; do
    python -m gmlp_ablate.run "$here/sweeps/mqar_recall.yaml" "name=mqar_recall_kv$kk" "task.num_kv_pairs=$kk" \
      || echo "mqar_recall_kv$kk: some trials failed"
    python -m analysis.report "mqar_recall_kv$kk" --out "$here/results/mqar_recall_kv$kk"
  done
done
