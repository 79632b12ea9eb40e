"""``python -m analysis.report NAME``: the comparison report of a sweep.

Writes ``reports/NAME/`` (``report.md``, a self-contained ``report.html``, ``summary.csv``,
``table.tex`` and the PNG figures), logs the folder to the sweep's latest parent run
(artifact path ``report/``) and prints the folder's path. Errors the user can fix (no such
experiment, no finished runs, unknown metric or baseline) exit with status 2 and one line
on stderr; a report written but not logged to MLflow exits with status 1.
"""

from __future__ import annotations

import argparse
import base64
import html
import re
import shlex
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pandas as pd

from analysis import paper as paper_mod
from analysis import stats, tables
from analysis.labels import direction, metric_label
from analysis.load import AnalysisError, SweepData, load_curves, load_sweep, log_report
from gmlp_ablate.schema import did_you_mean

OWN_FILES = ("report.md", "report.html", "summary.csv", "table.tex", "curves.png", "final.png",
             "heatmap.png", "pareto.png")
SETUP_KEYS = ("task.name", "task.seq_len", "model.dim", "model.depth", "model.ff_mult", "train.steps",
              "train.batch_size", "train.lr")


# --------------------------------------------------------------------------------------
# A tiny document model rendered to Markdown and HTML
# --------------------------------------------------------------------------------------


@dataclass
class Doc:
    """Blocks of a report: ("h1"|"h2"|"p"|"ul"|"code"|"table"|"img", payload)."""

    blocks: List[Tuple[str, Any]] = field(default_factory=list)

    def add(self, kind: str, payload: Any) -> None:
        self.blocks.append((kind, payload))

    def to_markdown(self) -> str:
        out = []
        for kind, x in self.blocks:
            if kind == "h1":
                out.append(f"# {x}")
            elif kind == "h2":
                out.append(f"## {x}")
            elif kind == "p":
                out.append(x)
            elif kind == "ul":
                out.append("\n".join(f"- {item}" for item in x))
            elif kind == "code":
                out.append(f"```\n{x}\n```")
            elif kind == "table":
                out.append((f"*{x.caption}*\n\n" if x.caption else "") + x.to_markdown())
            elif kind == "img":
                path, alt = x
                out.append(f"![{alt}]({path.name})")
        return "\n\n".join(out) + "\n"

    def to_html(self, title: str) -> str:
        body = []
        for kind, x in self.blocks:
            if kind in ("h1", "h2"):
                body.append(f"<{kind}>{_inline(x)}</{kind}>")
            elif kind == "p":
                body.append(f"<p>{_inline(x)}</p>")
            elif kind == "ul":
                body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in x) + "</ul>")
            elif kind == "code":
                body.append(f"<pre><code>{html.escape(x)}</code></pre>")
            elif kind == "table":
                body.append(f'<div class="scroll">{x.to_html()}</div>')
            elif kind == "img":
                path, alt = x
                raw = path.read_bytes()
                width = struct.unpack(">I", raw[16:20])[0] * 96 // plots_dpi()  # PNG IHDR width, in CSS px
                data = base64.b64encode(raw).decode("ascii")
                body.append(f'<figure><img alt="{html.escape(alt)}" style="width:{width}px" '
                            f'src="data:image/png;base64,{data}">'
                            f"<figcaption>{html.escape(alt)}</figcaption></figure>")
        return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
                f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body><main>\n"
                + "\n".join(body) + "\n</main></body></html>\n")


CSS = """
body{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
color:#1f2328;background:#fff;margin:0;line-height:1.5}
main{max-width:1200px;margin:0 auto;padding:24px 32px}
h1{font-size:1.7em;border-bottom:1px solid #d0d7de;padding-bottom:.3em}
h2{font-size:1.3em;margin-top:1.6em;border-bottom:1px solid #eaeef2;padding-bottom:.2em}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.88em}
code{background:#f6f8fa;padding:.1em .3em;border-radius:4px}
pre{background:#f6f8fa;padding:12px;border-radius:6px;overflow-x:auto}
pre code{background:none;padding:0}
.scroll{overflow-x:auto}
table{border-collapse:collapse;margin:8px 0 16px;font-size:.9em}
caption{caption-side:top;text-align:left;color:#57606a;font-size:.92em;padding-bottom:6px}
th,td{border-top:1px solid #d0d7de;border-bottom:1px solid #d0d7de;padding:5px 10px;white-space:nowrap}
th{background:#f6f8fa;font-weight:600;white-space:normal;vertical-align:bottom;min-width:4em}
td.left,th.left{text-align:left}td.right,th.right{text-align:right;font-variant-numeric:tabular-nums}
td.center,th.center{text-align:center}
tbody tr:nth-child(even){background:#fbfcfd}
figure{margin:16px 0}img{max-width:100%;height:auto;border:1px solid #eaeef2}
figcaption{color:#57606a;font-size:.9em}
"""


def plots_dpi() -> int:
    """The figures' dots per inch (they are shown at 96 CSS px per inch, so text sizes match)."""
    from analysis.plots import DPI

    return DPI


def _inline(text: str) -> str:
    """Escape, then ``code`` and **bold** to HTML."""
    t = html.escape(text)
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    t = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", t)
    return re.sub(r"(?<![*\w])\*([^*\s][^*]*)\*(?![*\w])", r"<em>\1</em>", t)


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


def choose_baseline(runs: pd.DataFrame, requested: Optional[str], baselines: Sequence[str]) -> Optional[str]:
    """The reference arm: ``requested`` or the sweep's first baseline with finished runs."""
    arms = list(dict.fromkeys(runs["arm"]))
    if requested is not None:
        if requested not in arms:
            raise AnalysisError(f"unknown baseline '{requested}': arms with finished runs are "
                                f"{', '.join(arms)}{did_you_mean(requested, arms)}")
        return requested
    return next((b for b in baselines if b in arms), None)


def report_command(name: str, uri: str, baseline: Optional[str], metric: Optional[str], out: Optional[str]) -> str:
    """The command line that regenerates this report."""
    parts = ["python", "-m", "analysis.report", name, "--tracking-uri", uri]
    if baseline:
        parts += ["--baseline", baseline]
    if metric:
        parts += ["--metric", metric]
    if out:
        parts += ["--out", out]
    return " ".join(shlex.quote(p) for p in parts)


# --------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------


@dataclass
class Analysis:
    """The pure results a report is written from."""

    metric: str
    mode: str
    baseline: Optional[str]
    order: List[str]
    summary: pd.DataFrame
    arm_info: pd.DataFrame
    paper: pd.DataFrame
    orderings: pd.DataFrame
    csv: pd.DataFrame


def analyse(data: SweepData, metric: str, baseline: Optional[str]) -> Analysis:
    """Summary per arm, deltas to ``baseline``, paper columns and orderings (pure)."""
    meta, runs = data.meta, data.runs
    mode = meta.metric_mode if metric == meta.metric else _mode_for(metric, meta.metric_mode)
    factors = [f for f in meta.factors if f in runs.columns]
    order = stats.arm_order(runs, factors, meta.grid, meta.baselines)
    summary = stats.arm_summary(runs, metric, baseline, mode, order)
    arm_info = stats.arm_factors(runs, factors, order)
    ref = paper_mod.load_reference()
    rows = paper_mod.arm_rows(runs, order, factors)
    pcols = paper_mod.paper_columns(ref, rows, order)
    orderings = paper_mod.orderings(runs, summary, pcols, metric, mode, factors)
    csv = tables.summary_frame(summary, arm_info, pcols, factors, metric, mode, baseline)
    return Analysis(metric, mode, baseline, order, summary, arm_info, pcols, orderings, csv)


def _mode_for(metric: str, sweep_mode: str) -> str:
    """Direction of a metric other than the sweep's: accuracy/throughput up, losses down."""
    if metric.endswith("/acc") or metric.startswith("perf/"):
        return "max"
    if "loss" in metric or metric.endswith(("/bpb", "/ppl")):
        return "min"
    return sweep_mode


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


def write_figures(data: SweepData, an: Analysis, out: Path) -> Dict[str, Path]:
    """Write the PNG figures into ``out`` (created; a previous report's files removed)."""
    from analysis import plots  # matplotlib/seaborn load only once there is something to draw

    meta, runs = data.meta, data.runs
    out.mkdir(parents=True, exist_ok=True)
    for name in OWN_FILES:  # a previous report's figures (e.g. a heatmap) must not linger
        (out / name).unlink(missing_ok=True)
    files: Dict[str, Path] = {}
    title = f"sweep '{meta.name}'"
    baseline_arms = [a for a in an.order if bool(an.arm_info.loc[a, "baseline"])]
    palette = plots.arm_palette(an.order, baseline_arms)
    factors = [f for f in meta.factors if f in an.arm_info.columns]
    if data.curves is not None and not data.curves.empty:
        curve_metrics = [m for m in dict.fromkeys([an.metric, "train/loss"]) if m in set(data.curves["metric"])]
        bands = {m: stats.curve_bands(data.curves, m) for m in curve_metrics}
        files["curves"] = plots.plot_curves(bands, an.order, palette, baseline_arms, out / "curves.png", title,
                                            curves=data.curves)
    files["final"] = plots.plot_final(runs, an.summary, an.metric, an.mode, palette, an.baseline, out / "final.png", title)
    grid_cells = int((~an.arm_info["baseline"]).sum())
    if len(factors) == 2 and grid_cells > 1:
        files["heatmap"] = plots.plot_heatmap(an.summary, an.arm_info, factors, an.metric, an.mode,
                                              tables.column_decimals(an.summary), out / "heatmap.png", title)
    pareto = plots.plot_pareto(an.summary, an.metric, an.mode, palette, baseline_arms, out / "pareto.png", title)
    if pareto is not None:
        files["pareto"] = pareto
    return files


def write_documents(data: SweepData, an: Analysis, out: Path, figures: Dict[str, Path], command: str) -> Dict[str, Path]:
    """Write summary.csv, table.tex, report.md and the self-contained report.html."""
    meta, runs = data.meta, data.runs
    files = dict(figures)
    factors = [f for f in meta.factors if f in an.arm_info.columns]
    main_table = tables.comparison_table(an.summary, an.arm_info, factors, an.metric, an.mode, an.baseline)
    task = ", ".join(sorted({str(t) for t in runs.get("task.name", pd.Series(["?"])).dropna()}))
    ptable = tables.paper_table(an.summary, an.paper, an.metric, an.mode, task)
    otable = tables.ordering_table(an.orderings, an.metric, an.mode)

    files["summary"] = out / "summary.csv"
    an.csv.to_csv(files["summary"], float_format="%.10g")
    tex = [main_table.to_latex(label=f"tab:{_slug(meta.name)}",
                               comment=f"Reproduce: {command}\nRequires \\usepackage{{booktabs}}.")]
    if ptable is not None:
        tex.append(ptable.to_latex(label=f"tab:{_slug(meta.name)}-paper",
                                   comment=f"Reproduce: {command}\nPaper values from analysis/data/gmlp_paper.csv "
                                           "(Liu et al. 2021); approximate ones are marked."))
    files["table"] = out / "table.tex"
    files["table"].write_text("\n\n".join(tex) + "\n")

    doc = build_doc(data, an, main_table, ptable, otable, files, command, task)
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


def build_doc(data: SweepData, an: Analysis, main_table: tables.Table, ptable: Optional[tables.Table],
              otable: Optional[tables.Table], files: Dict[str, Path], command: str, task: str) -> Doc:
    """The report's content, in reading order."""
    meta, runs = data.meta, data.runs
    doc = Doc()
    doc.add("h1", f"Sweep report: {meta.name}")
    if meta.description:
        doc.add("p", meta.description)
    seeds = sorted(int(s) for s in runs["seed"].dropna().unique())
    base_note = (f"`{an.baseline}`" if an.baseline else
                 "none (the sweep has no baseline arm with finished runs; no deltas)")
    doc.add("ul", [
        f"metric: `{an.metric}` — {metric_label(an.metric)}, {direction(an.mode)}",
        f"reference baseline: {base_note}",
        f"finished trials used: {len(runs)} ({len(an.order)} arms × seeds {_ranges(seeds)}); "
        f"the latest FINISHED run of each trial key, pooled over {len(meta.parents)} invocation(s)",
        f"failed trial runs: {len(data.failures)}"
        + (f" ({int((~data.failures['resolved']).sum())} without a finished rerun)" if len(data.failures) else ""),
        *([f"trial runs still RUNNING (not included): {data.n_running}"] if data.n_running else []),
        *([f"finished runs of an older config of the same arm (not included): {len(data.superseded)}"]
          if data.superseded is not None and len(data.superseded) else []),
        *([f"failed runs of an older config of the same arm (not included): {data.superseded_failures}"]
          if data.superseded_failures else []),
        f"git commit(s): {'; '.join(_commits(data))}",
        f"tracking URI: `{meta.tracking_uri}`, experiment id {meta.experiment_id}, latest parent run `{meta.parent_run_id}`",
        f"generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
    ])
    doc.add("p", "Reproduce this report:")
    doc.add("code", command)
    commands = list(dict.fromkeys(p["command"] for p in meta.parents if p["command"]))
    if commands:
        doc.add("p", "The sweep was run with:")
        doc.add("code", "\n".join(commands))
    setup = _setup_lines(runs)
    if setup:
        doc.add("p", "Setup (values over all runs):")
        doc.add("ul", setup)

    doc.add("h2", "Results")
    doc.add("table", main_table)
    notes = ["Mean over seeds ± the half-width of the 95% Student-t interval (t quantile with n−1 df, "
             "sample std with ddof=1); one seed gives no interval (\"n=1, no CI\")."]
    if an.baseline:
        notes.append(f"Δ = mean(arm) − mean({an.baseline}); its 95% CI uses the Welch standard error and "
                     "Welch–Satterthwaite df. p: two-sided Welch t-test, Holm-corrected across the arms compared "
                     "with the baseline.")
    notes.append("params, FLOPs/token, tokens/s: medians over the arm's runs (final logged values). "
                 "Bold: the best arm by mean.")
    doc.add("ul", notes)

    doc.add("h2", "Compared with the paper")
    doc.add("p", "Paper: Liu, Dai, So & Le, *Pay Attention to MLPs* (2021), trained on C4 (masked LM) or ImageNet at "
                 f"scale. Ours: `{task}` at laptop scale. Absolute values are not comparable and are shown in "
                 "separate columns; only the ordering of variants can carry over.")
    if ptable is not None:
        doc.add("table", ptable)
        if otable is not None:
            doc.add("table", otable)
        if an.paper["paper_approx"].fillna(False).astype(bool).any():
            doc.add("p", "≈: the paper value comes from a secondary transcription and was not verified against a "
                         "second source (`verified` ≠ yes in `analysis/data/gmlp_paper.csv`); treat it as approximate.")
    else:
        doc.add("p", "No arm of this sweep has a matching number in the paper.")
    for note in paper_mod.notes_for(meta.factors):
        doc.add("p", note)

    doc.add("h2", "Figures")
    captions = {
        "curves": f"Learning curves: {an.metric} (and train/loss) vs step, mean over seeds with a 95% CI band (clipped to the metric's range) and each seed as a thin line.",
        "final": f"Final {an.metric} per arm: mean and 95% CI over seeds; dots are seeds; dashed line: baseline mean.",
        "heatmap": f"Mean {an.metric} per cell of the two-factor grid.",
        "pareto": f"{an.metric} vs parameters and FLOPs per token, with the Pareto front (red).",
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
    doc.add("p", f"Per-arm numbers at full precision: `summary.csv`; LaTeX: `table.tex`. Regenerate with `{command}`.")
    return doc


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m analysis.report",
                                description="Tables and plots of a sweep against its attention baseline.")
    p.add_argument("name", help="the sweep name (MLflow experiment)")
    p.add_argument("--tracking-uri", default=None, help="MLflow store (default: sqlite:///mlflow.db in the working directory)")
    p.add_argument("--out", default=None, help="output folder (default: reports/NAME)")
    p.add_argument("--baseline", default=None, help="reference arm for deltas (default: the sweep's first baseline)")
    p.add_argument("--metric", default=None, help="metric to compare (default: the sweep's metric)")
    p.add_argument("--no-log", action="store_true", help="do not log the report to the sweep's parent run")
    return p.parse_args(argv)


def run(args: argparse.Namespace, timings: Optional[Dict[str, float]] = None) -> Path:
    """Load, analyse, write and log; returns the report folder. ``timings`` gets seconds per phase."""
    from gmlp_ablate.tracking import normalize_uri

    clock = _Clock(timings)
    uri = normalize_uri(args.tracking_uri)
    data = load_sweep(args.name, uri)
    metric = choose_metric(data.runs, args.metric, data.meta.metric)
    baseline = choose_baseline(data.runs, args.baseline, data.meta.baselines)
    clock.lap("load runs")
    data.curves = load_curves(data.meta, data.runs, list(dict.fromkeys([metric, "train/loss"])))
    clock.lap("load curves")
    out = Path(args.out) if args.out else Path("reports") / args.name.replace("/", "_")
    command = report_command(args.name, uri, args.baseline, args.metric, args.out)
    an = analyse(data, metric, baseline)
    clock.lap("stats")
    figures = write_figures(data, an, out)
    clock.lap("plots")
    write_documents(data, an, out, figures, command)
    clock.lap("writing")
    if not args.no_log:
        try:
            log_report(data.meta, out, [p.name for p in out.iterdir() if p.name in OWN_FILES])
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
