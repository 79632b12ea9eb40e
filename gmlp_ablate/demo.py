"""``make demo``: the model zoo at a glance, a small sweep, and its report.

Runs ``sweeps/demo.yaml`` with ``gmlp_ablate.run`` (Ray Tune + MLflow in ./mlflow.db), then
``python -m analysis.report demo``, and prints where to look.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gmlp_ablate.models.config import ModelConfig
from gmlp_ablate.tasks.config import TaskConfig

ROOT = Path(__file__).resolve().parent.parent
ZOO = [
    ("gMLP (split SGU)", {}),
    ("gMLP (unsplit SGU)", {"sgu_split": False}),
    ("aMLP (tiny attention 32)", {"attn_dim": 32}),
    ("Transformer (4 heads)", {"arch": "transformer", "heads": 4}),
]


def zoo_table(dim: int = 64, depth: int = 2, seq_len: int = 64) -> str:
    """Params and FLOPs/token of each architecture at the demo's size, as a text table."""
    from gmlp_ablate.models import build_model
    from gmlp_ablate.tasks import task_shape

    shape = task_shape(TaskConfig(name="charlm", seq_len=seq_len))
    lines = [f"model zoo at dim={dim}, depth={depth}, seq_len={seq_len}, byte vocab:",
             f"  {'model':<26} {'params':>10} {'FLOPs/token':>12}"]
    for name, knobs in ZOO:
        model = build_model(ModelConfig(dim=dim, depth=depth, **knobs), shape)
        lines.append(f"  {name:<26} {model.num_params():>10,} {model.flops_per_token():>12,.0f}")
    return "\n".join(lines)


def main() -> int:
    print(zoo_table(), flush=True)
    sweep = ROOT / "sweeps" / "demo.yaml"
    print(f"\n$ python -m gmlp_ablate.run {sweep.relative_to(ROOT)}", flush=True)
    code = subprocess.call([sys.executable, "-m", "gmlp_ablate.run", str(sweep)])
    if code == 2:
        return code
    print("\n$ python -m analysis.report demo", flush=True)
    rc = subprocess.call([sys.executable, "-m", "analysis.report", "demo"])
    print("\nbrowse the runs:  mlflow ui --backend-store-uri sqlite:///mlflow.db   (http://127.0.0.1:5000)")
    return code or rc


if __name__ == "__main__":
    sys.exit(main())
