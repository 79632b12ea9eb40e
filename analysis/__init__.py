"""Analysis of gmlp_ablate sweeps: MLflow runs -> tidy DataFrames -> statistics -> tables,
plots and the report (``python -m analysis.report NAME``).

``load`` is the only module that talks to MLflow; everything after it is pure pandas.
"""

from analysis.load import (AnalysisError, SweepData, SweepMeta, experiment_names, load_curves, load_meta, load_runs,
                           load_sweep, log_report)

__all__ = ["AnalysisError", "SweepData", "SweepMeta", "experiment_names", "load_curves", "load_meta", "load_runs",
           "load_sweep", "log_report"]
