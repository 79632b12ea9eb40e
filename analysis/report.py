"""``python -m analysis.report NAME``: the comparison report of a sweep.

Writes ``reports/NAME/`` (``report.md``, a self-contained ``report.html``, ``summary.csv``,
``comparisons.csv``, ``table.tex`` and the PNG figures), logs those files to the sweep's
latest parent run (artifact path ``report/``) and prints the folder's path. The folder name
comes from :func:`gmlp_ablate.names.path_component`; the report never overwrites a file it
did not write (:mod:`analysis.outdir`).

The comparisons tested are the family the sweep declared before it ran (:mod:`analysis.design`),
with Holm's correction over exactly that family; ``--baseline ARM`` adds an *exploratory* view
(every arm against ARM), labelled as such, and never changes the family.

Errors the user can fix (no such experiment, no finished runs, unknown metric or baseline, an
unusable output folder, an unreachable tracking server) exit with status 2 and one line on
stderr; a report written but not logged to MLflow exits with status 1.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from analysis import outdir, tables
from analysis import paper as paper_mod
from analysis import stats
from analysis.analyse import Analysis, analyse, comparisons_frame
from analysis.document import Doc
from analysis.labels import direction, metric_label
from analysis.load import AnalysisError, SweepData, load_curves, load_sweep, log_report
from gmlp_ablate.names import curve_metric
from gmlp_ablate.schema import did_you_mean

REPO = Path(__file__).resolve().parents[1]
SETUP_KEYS = ("task.name", "task.seq_len", "model.dim", "model.depth", "model.ff_mult", "train.steps",
              "train.batch_size", "train.lr")


# --------------------------------------------------------------------------------------
# Choices and checks
# --------------------------------------------------------------------------------------


def choose_metric(runs: pd.DataFrame, requested: Optional[str], default: str) -> str:
    """The metric to compare (``requested`` or the sweep's); AnalysisError if not logged."""
    metric = requested or default
    available = [c for c in runs.columns if "/" in c]
    if metric not in available or runs[metric].notna().sum() == 0:
        src = "--metric" if requested else "the sweep's metric"
        raise AnalysisError(f"unknown metric '{metric}' ({src}): the finished runs log "
                            f"{', '.join(available) or 'no metrics'}{did_you_mean(metric, available)}")
    return metric


def choose_baseline(runs: pd.DataFrame, requested: Optional[str]) -> Optional[str]:
    """The arm of the exploratory view (``--baseline``); AnalysisError if it has no finished runs."""
    arms = list(dict.fromkeys(runs["arm"]))
    if requested is not None and requested not in arms:
        raise AnalysisError(f"unknown baseline '{requested}': arms with finished runs are "
                            f"{', '.join(arms)}{did_you_mean(requested, arms)}")
    return requested


def shown_uri(uri: str) -> Optional[str]:
    """The tracking URI as a reproduce line shows it: a sqlite store by its path relative to
    the working directory (None for the default ``mlflow.db``); other URIs unchanged."""
    if not uri.startswith("sqlite:///"):
        return uri
    path = outdir.shown_path(uri[len("sqlite:///"):]) or Path(uri).name
    return None if path == "mlflow.db" else f"sqlite:///{path}"


def report_command(name: str, uri: str, baseline: Optional[str], metric: Optional[str], out: Optional[str]) -> str:
    """The command line that regenerates this report from a fresh clone (run where the store
    is): no absolute path of this machine."""
    parts = ["python", "-m", "analysis.report", name]
    shown = shown_uri(uri)
    if shown:
        parts += ["--tracking-uri", shown]
    if baseline:
        parts += ["--baseline", baseline]
    if metric:
        parts += ["--metric", metric]
    out_shown = outdir.shown_path(out)
    if out_shown:
        parts += ["--out", out_shown]
    return " ".join(shlex.quote(p) for p in parts)


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


def _setup_lines(runs: pd.DataFrame) -> List[str]:
    out = []
    for k in SETUP_KEYS:
        if k in runs.columns:
            vals = list(dict.fromkeys(tables.fmt_value(v) for v in runs[k]))
            out.append(f"`{k}` = {', '.join(vals[:6])}{' ...' if len(vals) > 6 else ''}")
    devices = sorted({str(d) for d in runs.get("device", pd.Series(dtype=object)).dropna()})
    if devices:
        out.append(f"device: {', '.join(devices)}")
    return out


def _commits(data: SweepData) -> List[str]:
    counts = data.runs["git_commit"].fillna("unknown").value_counts()
    lines = [f"`{c}` ({n} trial run{'s' if n != 1 else ''})" for c, n in counts.items()]
    if len(counts) > 1:
        lines.append("**the pooled runs come from more than one commit**")
    if any(str(c).endswith("-dirty") for c in counts.index):
        lines.append("**some runs come from a modified working tree (-dirty)**")
    return lines


MACHINE_OPTIONS = ("--storage", "--tracking-uri", "--address")
"""Runner options whose values belong to the machine that ran the sweep, not to the sweep."""


def portable_command(command: str) -> str:
    """A recorded runner command as it reproduces from a fresh clone: paths inside the
    repository made relative to it, options naming this machine's folders or servers left out."""
    try:
        words = shlex.split(command)
    except ValueError:
        return command
    root = str(REPO) + "/"
    out: List[str] = []
    skip = False
    for w in words:
        if skip:
            skip = False
            continue
        if w in MACHINE_OPTIONS:
            skip = True
            continue
        if any(w.startswith(o + "=") for o in MACHINE_OPTIONS):
            continue
        out.append(w[len(root):] if w.startswith(root) else _in_repo(w))
    return " ".join(shlex.quote(w) for w in out)


def _in_repo(word: str) -> str:
    """An absolute path from another checkout of the project (``/elsewhere/sweeps/x.yaml``) as
    the same file relative to this one, when this one has it; anything else unchanged."""
    if not word.startswith("/"):
        return word
    parts = Path(word).parts
    for i in range(1, len(parts)):
        rel = Path(*parts[i:])
        if (REPO / rel).is_file():
            return str(rel)
    return word


def write_figures(data: SweepData, an: Analysis, out: Path) -> Dict[str, Path]:
    """Write the PNG figures into ``out``."""
    from analysis import plots  # matplotlib/seaborn load only once there is something to draw

    meta = data.meta
    files: Dict[str, Path] = {}
    title = f"sweep '{meta.name}'"
    baseline_arms = [a for a in an.order if bool(an.arm_info.loc[a, "baseline"])]
    palette = plots.arm_palette(an.order, baseline_arms)
    factors = [f for f in meta.factors if f in an.arm_info.columns]
    if data.curves is not None and not data.curves.empty:
        curve_metrics = [m for m in dict.fromkeys([curve_metric(an.metric), "train/loss"])
                         if m in set(data.curves["metric"])]
        bands = {m: stats.curve_bands(data.curves, m) for m in curve_metrics}
        files["curves"] = plots.plot_curves(bands, an.order, palette, baseline_arms, out / "curves.png", title,
                                            curves=data.curves)
    seeds = an.values.rename(columns={"value": an.metric})  # diverged seeds at their counted value, if any
    files["final"] = plots.plot_final(seeds, an.summary, an.metric, an.mode, palette, an.design.reference_arm,
                                      out / "final.png", title)
    grid_cells = int((~an.arm_info["baseline"]).sum())
    if len(factors) == 2 and grid_cells > 1:
        files["heatmap"] = plots.plot_heatmap(an.summary, an.arm_info, factors, an.metric, an.mode,
                                              tables.column_decimals(an.summary), out / "heatmap.png", title)
    pareto = plots.plot_pareto(an.summary, an.metric, an.mode, palette, baseline_arms, out / "pareto.png", title)
    if pareto is not None:
        files["pareto"] = pareto
    if data.tune is not None and an.tune_select:
        from analysis.analyse import tuned_keys

        sens = plots.plot_sensitivity(data.tune, tuned_keys(data.tune), *an.tune_select, palette,
                                      out / "sensitivity.png", title)
        if sens is not None:
            files["sensitivity"] = sens
    if an.scaling is not None:
        files["scaling"] = plots.plot_scaling(an.scaling, an.values, an.metric, out / "scaling.png", title)
    return files


def _family_caption(an: Analysis) -> str:
    d = an.design
    pairs = "; ".join(f"{a} vs {b}" for a, b in d.family) or "none"
    how = (f"group-sequential ({an.plan.boundary} spending, looks at {', '.join(map(str, an.plan.looks))} seeds)"
           if an.plan is not None else f"Holm-adjusted p < {d.alpha:g}")
    solved = (f" Solved seeds ({d.solved.metric} past {d.solved.threshold:g}) are compared by an exact test (McNemar "
              "on the same seeds, else Fisher), unadjusted and secondary." if d.solved and d.solved.metric == an.metric else "")
    return (f"The family of comparisons, {d.label}: {pairs}. Holm's correction over exactly these "
            f"{len(d.family)} comparison(s); resolved = {how}. Test: paired t-test on the per-seed differences where "
            f"both arms have the same seeds, Welch's t-test where they do not.{solved}")


def write_documents(data: SweepData, an: Analysis, out: Path, figures: Dict[str, Path], command: str) -> Dict[str, Path]:
    """Write summary.csv, comparisons.csv, table.tex, report.md and the self-contained report.html."""
    meta = data.meta
    files = dict(figures)
    factors = [f for f in meta.factors if f in an.arm_info.columns]
    main_table = tables.comparison_table(an.summary, an.arm_info, factors, an.metric, an.mode, an.design.diverged)
    fam_table = tables.family_comparison_table(an.family, an.metric, an.design.alpha, _family_caption(an))
    ptable = tables.paper_table(an.summary, an.paper, an.metric, an.mode, an.task)
    otable = tables.ordering_table(an.orderings, an.metric, an.mode, an.design.alpha)

    files["summary"] = out / "summary.csv"
    an.csv.to_csv(files["summary"], float_format="%.10g")
    files["comparisons"] = out / "comparisons.csv"
    comparisons_frame(an).to_csv(files["comparisons"], index=False, float_format="%.10g")
    tex = [main_table.to_latex(label=f"tab:{_slug(meta.name)}",
                               comment=f"Reproduce: {command}\nRequires \\usepackage{{booktabs}}.")]
    if fam_table is not None:
        tex.append(fam_table.to_latex(label=f"tab:{_slug(meta.name)}-family", comment=f"Reproduce: {command}"))
    if ptable is not None:
        tex.append(ptable.to_latex(label=f"tab:{_slug(meta.name)}-paper",
                                   comment=f"Reproduce: {command}\nPaper values from analysis/data/gmlp_paper.csv "
                                           "(Liu et al. 2021); approximate ones are marked."))
    files["table"] = out / "table.tex"
    files["table"].write_text("\n\n".join(tex) + "\n")
    if an.scaling is not None:
        files["scaling_csv"] = out / "scaling.csv"
        pd.concat([an.scaling.fits.assign(kind="fit"), an.scaling.crossings.assign(kind="crossing")],
                  ignore_index=True).to_csv(files["scaling_csv"], index=False, float_format="%.10g")

    doc = build_doc(data, an, main_table, fam_table, ptable, otable, files, command)
    files["md"] = out / "report.md"
    files["md"].write_text(doc.to_markdown())
    files["html"] = out / "report.html"
    files["html"].write_text(doc.to_html(f"gMLP ablation report: {meta.name}"))
    return files


def _ranges(values: Sequence[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> ``0–2, 5, 7–8``."""
    out: List[str] = []
    vals = sorted(set(values))
    i = 0
    while i < len(vals):
        j = i
        while j + 1 < len(vals) and vals[j + 1] == vals[j] + 1:
            j += 1
        out.append(str(vals[i]) if i == j else f"{vals[i]}–{vals[j]}")
        i = j + 1
    return ", ".join(out)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-") or "sweep"


def _match_lines(matches: Dict[str, Dict[str, object]]) -> List[str]:
    out = []
    for arm, m in matches.items():
        try:
            rel = f"{float(m['achieved']) / float(m['target']) - 1:+.1%}"
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            rel = "?"
        out.append(f"`{arm}` sized to `{m.get('to', '?')}` by {m.get('by', '?')}: `{m.get('vary', '?')}` = "
                   f"{m.get('value', '?')} ({rel} from the target)")
    return out


def _design_lines(an: Analysis) -> List[str]:
    d = an.design
    if d.sequential is not None:
        s = d.sequential
        seeds = (f"sequential: {s.initial} seeds, then more in rounds up to {s.maximum}, stopping a comparison once "
                 f"it crosses its {s.boundary} alpha-spending boundary (seeds chosen before looking)")
    elif d.seeds:
        seeds = f"fixed before the sweep ran: {_ranges(d.seeds)}"
    else:
        seeds = "not recorded"
    solved = (f"a seed solves the task when `{d.solved.metric}` {'≥' if an.mode == 'max' else '≤'} {d.solved.threshold:g}"
              if d.solved else "none declared")
    return [
        f"family: {len(d.family)} comparison(s), {d.label}; family-wise alpha {d.alpha:g} (Holm)",
        (f"reference arm: `{d.reference_arm}`" + (f" ({', '.join(f'`{k}` = {tables.fmt_value(v)}' for k, v in d.reference.items())})"
                                                   if d.reference else "")) if d.reference_arm else "reference arm: none",
        f"seeds: {seeds}",
        f"solved outcome: {solved}",
        f"diverged seeds: {'counted as the worst value' if d.diverged == 'worst' else 'left out of the mean, counted'}",
    ]


def build_doc(data: SweepData, an: Analysis, main_table: tables.Table, fam_table: Optional[tables.Table],
              ptable: Optional[tables.Table], otable: Optional[tables.Table], files: Dict[str, Path],
              command: str) -> Doc:
    """The report's content, in reading order."""
    meta, runs = data.meta, data.runs
    doc = Doc()
    doc.add("h1", f"Sweep report: {meta.name}")
    if meta.description:
        doc.add("p", meta.description)
    seeds = sorted(int(s) for s in an.values["seed"].dropna().unique())
    f = data.failures
    doc.add("ul", [
        f"metric: `{an.metric}` — {metric_label(an.metric)}, {direction(an.mode)}",
        f"finished trials used: {len(runs)} ({len(an.order)} arms × seeds {_ranges(seeds)}); "
        f"the latest FINISHED run of each trial key, pooled over {len(meta.parents)} invocation(s)",
        f"failed trial runs: {len(f)}"
        + (f" ({int((~f['resolved']).sum())} without a finished rerun, {int((f['diverged'] & ~f['resolved']).sum())} "
           "of them diverged)" if len(f) else ""),
        *([f"trial runs still RUNNING (not included): {data.n_running}"] if data.n_running else []),
        *([f"finished runs of an older config of the same arm (not included): {len(data.superseded)}"]
          if data.superseded is not None and len(data.superseded) else []),
        *([f"failed runs of an older config of the same arm (not included): {data.superseded_failures}"]
          if data.superseded_failures else []),
        f"git commit(s): {'; '.join(_commits(data))}",
        f"experiment id {meta.experiment_id}, latest parent run `{meta.parent_run_id}`",
        f"generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
    ])
    doc.add("p", "Reproduce this report (in the folder that holds the MLflow store):")
    doc.add("code", command)
    commands = list(dict.fromkeys(portable_command(p["command"]) for p in meta.parents if p["command"]))
    if commands:
        doc.add("p", "The sweep was run with:")
        doc.add("code", "\n".join(commands))

    doc.add("h2", "Protocol")
    doc.add("ul", _design_lines(an) + _match_lines(meta.matches))
    setup = _setup_lines(runs)
    if setup:
        doc.add("p", "Setup (values over all runs):")
        doc.add("ul", setup)
    if an.tuning is not None:
        cols = list(an.tuning.columns)
        doc.add("table", tables.Table(header=cols, rows=[[str(v) for v in r] for r in an.tuning.itertuples(index=False)],
                                      align="l" * len(cols),
                                      caption="Tuning runs (stage tune) per arm: the settings tried → the value the "
                                              "final runs use. Only final runs enter the comparisons."))
        if an.tuning_edges:
            doc.add("p", "**Warning: a chosen setting is at the edge of its search range** (the search may not have "
                         "found the arm's best setting, and the comparison may favour the arm whose range fitted better):")
            doc.add("ul", an.tuning_edges)
    doc.add("h2", "Results")
    doc.add("table", main_table)
    doc.add("p", an.best_note[0].upper() + an.best_note[1:] + ".")
    if fam_table is not None:
        doc.add("table", fam_table)
        unresolved = an.family[~an.family["resolved"].astype(bool)]
        if len(unresolved):
            doc.add("p", "Power: for each unresolved comparison, the seeds per arm a fixed design would need for 80% "
                         f"power at level {an.design.alpha:g}/{len(an.family)} (Bonferroni, conservative for Holm) if "
                         "the true difference were the observed one, from the observed spread (noncentral t).")
    else:
        doc.add("p", "No comparisons: the sweep has a single arm.")
    if an.solved_steps is not None:
        _solved_section(doc, an)
    if an.scaling is not None:
        _scaling_section(doc, an)
    if an.exploratory is not None:
        doc.add("h2", f"Exploratory: every arm vs {an.baseline}")
        doc.add("table", tables.family_comparison_table(
            an.exploratory, an.metric, an.design.alpha,
            f"Exploratory view chosen on the command line (--baseline {an.baseline}), not the declared family: "
            "Holm within this view only; treat these as hypotheses for a new sweep, not as findings."))
    doc.add("h2", "Comparability")
    if an.warnings:
        doc.add("ul", an.warnings)
    else:
        doc.add("p", "The arms of each comparison differ only in the sweep's factors (and the baselines' declared "
                     "settings), run on the same task data, with the same code version.")

    doc.add("h2", "Compared with the paper")
    doc.add("p", "Paper: Liu, Dai, So & Le, *Pay Attention to MLPs* (2021), trained on C4 (masked LM) or ImageNet at "
                 f"scale. Ours: `{an.task}` at laptop scale. Absolute values are not comparable and are shown in "
                 "separate columns; only the ordering of variants can carry over, and only on the same task.")
    if ptable is not None:
        doc.add("table", ptable)
        if otable is not None:
            doc.add("table", otable)
        if an.paper["paper_approx"].fillna(False).astype(bool).any():
            doc.add("p", "≈: the paper value comes from a secondary transcription and was not verified against a "
                         "second source (`verified` ≠ yes in `analysis/data/gmlp_paper.csv`); treat it as approximate.")
    else:
        doc.add("p", f"No arm of this sweep has a paper number on the same task (`{an.task}`).")
    for note in paper_mod.notes_for(meta.factors):
        doc.add("p", note)

    doc.add("h2", "Figures")
    captions = {
        "curves": f"Learning curves: {curve_metric(an.metric)} (and train/loss) vs step, mean over seeds with a 95% CI band (clipped to the metric's range) and each seed as a thin line.",
        "final": f"Final {an.metric} per arm: mean and 95% interval over seeds; dots are seeds; dashed line: the reference arm's mean.",
        "heatmap": f"Mean {an.metric} per cell of the two-factor grid.",
        "pareto": f"{an.metric} vs parameters and FLOPs per token, with the Pareto front (red).",
        "scaling": f"Scaling: {an.metric} against parameters and FLOPs per token per series (log-log), with the "
                   "fitted power laws.",
        "sensitivity": f"Tuning stage: {(an.tune_select or ('',))[0]} against each searched setting, one line per arm (at each value, "
                       "the best tuning run over the other settings).",
    }
    for key, cap in captions.items():
        if key in files:
            doc.add("img", (files[key], cap))

    doc.add("h2", "Failed trials")
    ftable = tables.failures_table(data.failures)
    if ftable is None:
        doc.add("p", "None.")
    else:
        reasons = data.failures.groupby("failure", dropna=False).size()
        doc.add("p", "Reasons: " + ", ".join(f"{k or 'unknown'}: {v}" for k, v in reasons.items()))
        doc.add("table", ftable)
    doc.add("p", "Per-arm numbers at full precision: `summary.csv`; every comparison: `comparisons.csv`; LaTeX: "
                 f"`table.tex`. Regenerate with `{command}`.")
    return doc


def _solved_section(doc: Doc, an: Analysis) -> None:
    """Solved fraction per arm and the step at which each solved seed passed the threshold."""
    th = an.design.solved.threshold
    curve = curve_metric(an.metric)
    solved_seeds = an.values[stats.is_solved(an.values["value"].to_numpy(dtype=float), th, an.mode)]
    steps = an.solved_steps.merge(solved_seeds[["arm", "seed"]], on=["arm", "seed"])
    rows = []
    for arm in an.order:
        s = an.summary.loc[arm]
        st = steps.loc[steps["arm"] == arm].sort_values("seed")
        passed = ", ".join(f"{int(r.seed)}: {int(r.step)}" if np.isfinite(r.step) else f"{int(r.seed)}: —"
                           for r in st.itertuples(index=False)) or "—"
        med = float(np.nanmedian(st["step"])) if st["step"].notna().any() else float("nan")
        rows.append([arm, f"{int(s['solved_k'])}/{int(s['solved_n'])}",
                     f"[{s['solved_lo']:.2f}, {s['solved_hi']:.2f}]", passed, "—" if not np.isfinite(med) else f"{med:.0f}"])
    doc.add("h2", "Solved seeds")
    doc.add("table", tables.Table(
        header=["arm", f"solved ({an.metric} {'≥' if an.mode == 'max' else '≤'} {th:g})", "95% exact interval",
                f"seed: first step {curve} passed {th:g}", "median step"],
        rows=rows, align="lrrll",
        caption=f"A seed solves the task when its final {an.metric} reaches {th:g} (declared in the sweep file); the "
                f"interval is Clopper-Pearson. Steps come from the logged {curve} curve (every evaluation), so a "
                "step is the first evaluation at or past the threshold."))


def _scaling_section(doc: Doc, an: Analysis) -> None:
    """Power-law fits per series and where the fitted curves cross (:mod:`analysis.scaling`)."""
    from analysis.scaling import XS, describe_crossings

    sc = an.scaling
    what = sc.label(an.metric)
    doc.add("h2", "Scaling")
    doc.add("p", f"The grid varies `{sc.size_axis}`, so the report fits `{what} = a · x^b` per series (arms that "
                 "differ only in size) against parameters and against FLOPs per token: least squares in log-log "
                 "space over the sizes' seed means, with 95% bootstrap intervals over seeds within each size. "
                 "Every size trained for the same steps and batch, so these are fits at a fixed number of training "
                 "tokens, not compute-optimal curves.")
    rows = [[r.series, XS[r.x], str(r.n_sizes), f"{r.x_min:,.0f} – {r.x_max:,.0f}", f"{r.exponent:.3f}",
             f"[{r.lo:.3f}, {r.hi:.3f}]", f"[{r.fit_lo:.3f}, {r.fit_hi:.3f}]", f"{r.coefficient:.4g}", f"{r.r2:.3f}"]
            for r in sc.fits.itertuples(index=False)]
    doc.add("table", tables.Table(header=["series", "x", "sizes", "x range", "exponent b", "95% bootstrap (seeds)",
                                          "95% from residuals", "a", "R² (log-log)"], rows=rows, align="llrrrrrrr",
                                  caption=f"Fitted {what} = a · x^b. The bootstrap interval reflects seed noise "
                                          "only; the residual interval (t, sizes − 2 df) also reflects how far the "
                                          "sizes stray from a power law."))
    lines = describe_crossings(sc, an.mode)
    if lines:
        doc.add("ul", lines)


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m analysis.report",
                                description="Tables and plots of a sweep: its declared comparisons, tested.")
    p.add_argument("name", help="the sweep name (MLflow experiment)")
    p.add_argument("--tracking-uri", default=None, help="MLflow store (default: sqlite:///mlflow.db in the working directory)")
    p.add_argument("--out", default=None, help="output folder (default: reports/NAME); a new or empty folder, or one "
                                               "holding a previous report")
    p.add_argument("--baseline", default=None, help="add an exploratory view: every arm against this one (the "
                                                    "declared family is not changed)")
    p.add_argument("--metric", default=None, help="metric to compare (default: the sweep's metric)")
    p.add_argument("--no-log", action="store_true", help="do not log the report to the sweep's parent run")
    return p.parse_args(argv)


def run(args: argparse.Namespace, timings: Optional[Dict[str, float]] = None) -> Path:
    """Load, analyse, write and log; returns the report folder. ``timings`` gets seconds per phase."""
    from gmlp_ablate.tracking import normalize_uri

    clock = _Clock(timings)
    out = outdir.check_folder(Path(args.out) if args.out else outdir.default_folder(args.name))
    uri = normalize_uri(args.tracking_uri)
    data = load_sweep(args.name, uri)
    metric = choose_metric(data.runs, args.metric, data.meta.metric)
    baseline = choose_baseline(data.runs, args.baseline)
    clock.lap("load runs")
    data.curves = load_curves(data.meta, data.runs, list(dict.fromkeys([curve_metric(metric), "train/loss"])))
    clock.lap("load curves")
    command = report_command(args.name, uri, args.baseline, args.metric, args.out)
    an = analyse(data, metric, baseline)
    clock.lap("stats")
    outdir.prepare(out)
    figures = write_figures(data, an, out)
    clock.lap("plots")
    files = write_documents(data, an, out, figures, command)
    names = outdir.record(out, files.values(), args.name)
    clock.lap("writing")
    if not args.no_log:
        try:
            log_report(data.meta, out, names)
        except AnalysisError as e:
            raise NotLogged(f"report written to {out.resolve()} but not logged to the sweep's parent run: {e} "
                            "(--no-log skips logging)") from None
        clock.lap("log artifacts")
    return out.resolve()


class NotLogged(RuntimeError):
    """The report folder was written but could not be logged to MLflow."""


class _Clock:
    """Records the seconds since the previous lap into a dict (or nowhere)."""

    def __init__(self, sink: Optional[Dict[str, float]]):
        self.sink, self.t = sink, time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        if self.sink is not None:
            self.sink[name] = now - self.t
        self.t = now


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        out = run(args)
    except AnalysisError as e:
        print(f"analysis.report: error: {e}", file=sys.stderr)
        return 2
    except NotLogged as e:
        print(f"analysis.report: error: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
