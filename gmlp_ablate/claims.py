"""Who runs which trial when several drivers share one sweep and store.

A driver runs a trial only after it *claims* the trial key: it creates, in the tracking
store, a registered model named ``gmlp_ablate.claim.<experiment id>.<trial key>.<generation>``
whose tag names the driver's parent run. Registered-model names are unique in every MLflow
store (the primary key of the ``registered_models`` table; an ``mlflow server`` writes to
such a table too), so when several drivers create the same name at the same instant exactly
one succeeds; the others are told it exists. That makes a claim atomic without any lock
outside the store, on sqlite and behind a server alike.

A claim whose owner is dead (its parent run is no longer RUNNING, or
:func:`gmlp_ablate.liveness.is_dead` says so) is taken over by creating the next generation,
which again only one driver can do. A claim is deleted when its trial ends in this
invocation (finished, failed or stopped); a claim left by a driver that was killed stays
until someone takes it over.

After winning a claim the driver looks again for a FINISHED run of the key (one may have
finished, and its claim been released, between the driver's first look and its claim), so
a key finishes once however the drivers interleave. Runs left RUNNING by a dead driver are
closed here too (:func:`close_stale`).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from gmlp_ablate import liveness
from gmlp_ablate.names import FAILURE_DRIVER_LOST, PARENT, TAG_ERROR, TAG_FAILURE, TAG_KEY, TAG_PARENT_RUN, TRIAL

CLAIM_PREFIX = "gmlp_ablate.claim"
TAG_OWNER = "gmlp_ablate.claim_owner"
"""Claim tag: the parent run id of the driver holding the claim."""
MAX_GENERATIONS = 10_000


class Claims:
    """The claims of one driver (``parent_id``) in one experiment."""

    def __init__(self, tracker: Any, experiment_id: str, parent_id: str) -> None:
        self.tracker, self.experiment_id, self.parent_id = tracker, experiment_id, parent_id
        self.held: Dict[str, int] = {}  # trial key -> generation held

    def name(self, key: str, generation: int) -> str:
        return f"{CLAIM_PREFIX}.{self.experiment_id}.{key}.{generation}"

    def owner_alive(self, owner: Optional[str]) -> bool:
        """Is the driver of parent run ``owner`` still running its sweep?"""
        if not owner:
            return False
        if owner == self.parent_id:
            return True
        run = self.tracker.get_run(owner)
        return run is not None and run.info.status == "RUNNING" and not liveness.is_dead(run.data.tags)

    def claim(self, key: str) -> bool:
        """Claim ``key`` for this driver; False when a live driver holds it."""
        generation, attempts = 0, 0
        while generation < MAX_GENERATIONS and attempts < 2 * MAX_GENERATIONS:
            attempts += 1
            name = self.name(key, generation)
            if self.tracker.create_unique(name, {TAG_OWNER: self.parent_id, TAG_KEY: key}):
                self.held[key] = generation
                return True
            tags = self.tracker.unique_tags(name)
            if tags is None:  # released meanwhile: try the same generation again
                continue
            owner = tags.get(TAG_OWNER)
            if owner == self.parent_id:  # our own creation, answered as "exists" after a retried request
                self.held[key] = generation
                return True
            if self.owner_alive(owner):
                return False
            generation += 1  # the owner is dead: the next generation takes its place
        return False

    def release(self, key: str) -> None:
        """Delete this driver's claim of ``key`` and the dead generations below it."""
        generation = self.held.pop(key, None)
        if generation is None:
            return
        for g in range(generation, -1, -1):
            self.tracker.delete_unique(self.name(key, g))

    def release_all(self) -> None:
        for key in list(self.held):
            self.release(key)


def close_stale(tracker: Any, experiment_id: str) -> List[str]:
    """Close runs left RUNNING by drivers that died: their trials and parents -> FAILED
    (``driver_lost``); returns the run ids closed."""
    # Trials first: a trial read here was created after its parent, so the parents read next
    # include it if it still runs (the other order would take a new driver's trial for an orphan).
    trials = tracker.running(experiment_id, TRIAL)
    parents = tracker.running(experiment_id, PARENT)
    dead = {r.info.run_id for r in parents if liveness.is_dead(r.data.tags)}
    running_parents = {r.info.run_id for r in parents}
    closed: List[str] = []
    for r in trials:
        parent = r.data.tags.get(TAG_PARENT_RUN)
        if parent in dead or parent not in running_parents:
            tracker.end_trial(r.info.run_id, "FAILED", error="the sweep driver stopped before this trial ended",
                              failure=FAILURE_DRIVER_LOST)
            closed.append(r.info.run_id)
    for rid in dead:
        tracker.set_tags(rid, {TAG_ERROR: "the sweep driver stopped before the sweep ended",
                               TAG_FAILURE: FAILURE_DRIVER_LOST})
        tracker.end_run(rid, "FAILED")
        closed.append(rid)
    return closed
