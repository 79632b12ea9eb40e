"""Analysis of gmlp_ablate sweeps: MLflow runs -> tidy DataFrames -> statistics -> tables,
plots and the report (``python -m analysis.report NAME``); one family of comparisons across
several sweeps: ``python -m analysis.family A B C``.

``store`` is the only module that talks to MLflow (``load`` puts it together with the pure
``frames``); everything after it is pure pandas and scipy.
"""

from analysis.load import (AnalysisError, SweepData, SweepMeta, load_curves, load_meta, load_runs,
                           load_sweep, log_report)

__all__ = ["AnalysisError", "SweepData", "SweepMeta", "load_curves", "load_meta", "load_runs",
           "load_sweep", "log_report"]
