"""The comparison protocol's order of work: tune each arm, then run the final seeds.

``run_stages`` drives one sweep through its stages on an :class:`Executor` (the runner's
Ray Tune loop) without knowing how trials run:

1. **tune** (when the sweep declares ``tune:``): every arm's own candidates x the tuning
   seeds, at ``tune.steps``; each arm's best setting is picked on its ``val/*`` metric from
   the finished tuning runs in the store (so a rerun picks the same setting without
   training again, and a changed space re-tunes only the arms whose trials changed);
2. **final**: every arm's seeds at its own best setting. With a sequential design
   (``seeds: {initial, max}``) the seeds come in rounds, and a comparison of the declared
   family stops getting seeds once :mod:`gmlp_ablate.sequential` decides it; arms that no
   undecided comparison needs stop too.

Pure orchestration: no Ray, no MLflow here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Protocol, Tuple

from gmlp_ablate.names import STAGE_FINAL, STAGE_TUNE
from gmlp_ablate.sweep import Sweep, Trial
from gmlp_ablate import tuning


class Executor(Protocol):
    """What the runner provides: run trials (skipping finished keys) and read results back."""

    def run(self, trials: List[Trial], stage: str, scheduler: Optional[Dict[str, Any]] = None) -> None:
        """Run every trial of ``trials`` whose key has no FINISHED run yet; block until done.
        ``scheduler``: ``{name, metric, mode}`` of the stage's early stopping (``name: asha``),
        applied to each arm's trials apart."""

    def results(self) -> Dict[str, Dict[str, float]]:
        """trial_key -> last metric values of its latest FINISHED run (either stage), with
        ``stopped_at_step`` when a stage's scheduler stopped that run early."""


@dataclass
class Plan:
    """What a sweep will run, stage by stage (``--dry-run``)."""

    tune_trials: List[Trial] = field(default_factory=list)
    final_trials: List[Trial] = field(default_factory=list)
    """At the base settings; with tuning, the final keys are known only after stage 1."""
    max_final: int = 0
    """Most final trials (a sequential design may stop earlier)."""


def plan(sweep: Sweep, with_candidates: bool = True) -> Plan:
    """The stages' trials as far as they can be known before anything runs."""
    p = Plan(final_trials=list(sweep.trials))
    seq = sweep.sequential
    p.max_final = len(sweep.arms) * (seq.max if seq else len(sweep.seed_list))
    if sweep.config.tune is not None and with_candidates:
        p.tune_trials = tuning.tune_trials(sweep, candidates(sweep))
    return p


def candidates(sweep: Sweep) -> Dict[str, List[Dict[str, Any]]]:
    """Each arm's tuning candidates (deterministic for the sweep file)."""
    t = sweep.config.tune
    return {arm: tuning.candidates(tuning.space_for(sweep, arm), t.budget, t.search_seed) for arm in sweep.arms}


def chosen_settings(sweep: Sweep, tune_trials: List[Trial], results: Dict[str, Dict[str, float]]) -> Dict[str, Dict[str, Any]]:
    """Each arm's best tuning candidate, from the finished tuning runs that ran to their last
    step (one the scheduler stopped early is no candidate: :func:`tuning.selection_value`)."""
    select = sweep.config.tune.select
    per_arm: Dict[str, List[Tuple[Dict[str, Any], Optional[float]]]] = {arm: [] for arm in sweep.arms}
    for t in tune_trials:
        value = tuning.selection_value(results.get(t.key, {}), select)
        per_arm[t.arm].append((t.settings, value))
    return tuning.select(sweep, per_arm)


def run_stages(sweep: Sweep, executor: Executor, say: Callable[[str], None] = print) -> Dict[str, Any]:
    """Run the sweep's stages; returns ``{"settings": {arm: {...}}, "rounds": [...]}``."""
    settings: Dict[str, Dict[str, Any]] = {}
    t = sweep.config.tune
    if t is not None:
        tune_trials = tuning.tune_trials(sweep, candidates(sweep))
        say(f"stage 1 (tune): {len(tune_trials)} trials, {t.budget} candidate(s) x {len(t.seeds)} seed(s) per arm")
        executor.run(tune_trials, STAGE_TUNE, {"name": t.scheduler, "metric": t.select, "mode": t.mode})
        settings = chosen_settings(sweep, tune_trials, executor.results())
        for arm, s in settings.items():
            edge = tuning.on_edge(tuning.space_for(sweep, arm), s)
            say(f"  {arm}: {s}" + (f"  (warning: {', '.join(edge)} at the edge of the search range)" if edge else ""))
    seq = sweep.sequential
    if seq is None:
        trials = sweep.trials_for(sweep.seed_list, settings)
        say(f"stage 2 (final): {len(trials)} trials" if t is not None else f"{len(trials)} trials")
        executor.run(trials, STAGE_FINAL)
        return {"settings": settings, "rounds": [len(sweep.seed_list)]}
    return _sequential(sweep, executor, settings, say)


def _sequential(sweep: Sweep, executor: Executor, settings: Dict[str, Dict[str, Any]],
                say: Callable[[str], None]) -> Dict[str, Any]:
    from gmlp_ablate import sequential

    seq = sweep.sequential
    assert seq is not None
    design = sequential.plan(seq.initial, seq.max, sweep.config.alpha, seq.boundary, len(sweep.family), seq.step)
    metric, mode = sweep.config.metric.name, sweep.config.metric.mode
    names = {pair: f"{pair[0]} vs {pair[1]}" for pair in sweep.family}
    decisions: Dict[str, Any] = {}
    rounds: List[int] = []
    open_pairs = list(sweep.family)
    done = 0
    for look, n in enumerate(design.looks):
        arms = [a for a in sweep.arms if any(a in pair for pair in open_pairs)]
        seeds = seq.seeds(n)[done:]
        say(f"round {look + 1}/{len(design.looks)}: seed(s) {', '.join(map(str, seeds))} for {len(arms)} arm(s) "
            f"({len(open_pairs)} comparison(s) undecided)")
        executor.run(sweep.trials_for(seeds, settings, arms=arms), STAGE_FINAL)
        done = n
        rounds.append(n)
        results = executor.results()
        diffs = {names[pair]: paired_differences(sweep, pair, seq.seeds(n), settings, results, metric, mode)
                 for pair in sweep.family}
        for name, d in sequential.decide(design, diffs, look).items():
            if d.status != sequential.CONTINUE and name not in decisions:
                decisions[name] = {"status": d.status, "p": d.p, "seeds": n}
                say(f"  {name}: {d.status} after {n} seeds (p = {d.p:.3g})")
        open_pairs = [pair for pair in sweep.family if names[pair] not in decisions]
        if not open_pairs:
            break
    return {"settings": settings, "rounds": rounds, "decisions": decisions}


def paired_differences(sweep: Sweep, pair: Tuple[str, str], seeds: List[int], settings: Dict[str, Dict[str, Any]],
            results: Dict[str, Dict[str, float]], metric: str, mode: str) -> List[float]:
    """Per-seed differences of ``metric`` between arms ``a`` and ``b`` of ``pair``, in seed
    order, signed so that > 0 means ``a`` is better; seeds missing on either side are left out."""
    a, b = pair
    ta = {t.seed: t.key for t in sweep.trials_for(seeds, settings, arms=[a])}
    tb = {t.seed: t.key for t in sweep.trials_for(seeds, settings, arms=[b])}
    out = []
    sign = -1.0 if mode == "min" else 1.0
    for s in seeds:
        va, vb = results.get(ta[s], {}).get(metric), results.get(tb[s], {}).get(metric)
        if va is not None and vb is not None and math.isfinite(va) and math.isfinite(vb):
            out.append(sign * (va - vb))
    return out
