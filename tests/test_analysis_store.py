"""analysis.store against a real sqlite MLflow store: paging through the public API, the one
private bulk-history path (this test fails when an MLflow upgrade breaks it), and a dead
tracking server failing in seconds."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from analysis import store

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    eid = client.create_experiment("paged", artifact_location=(root / "artifacts").as_uri())
    ids = []
    for i in range(5):
        rid = client.create_run(eid, tags={"i": str(i)}).info.run_id
        ms = 1_700_000_000_000
        client.log_batch(rid, metrics=[Metric("val/loss", 1.0 / (s + 1 + i), ms + s, s) for s in range(4)]
                         + [Metric("val/loss", 9.0, ms + 10, 3),  # step 3 logged twice: the later value wins
                            Metric("train/loss", float("nan"), ms, 0)])
        client.set_terminated(rid)
        ids.append(rid)
    return {"uri": uri, "client": client, "eid": eid, "ids": ids}


def test_all_pages_follows_the_page_tokens(filled):
    client = filled["client"]
    calls = []

    def search(*args, **kwargs):
        calls.append(kwargs.get("page_token"))
        return client.search_runs(*args, **kwargs)

    runs = store.all_pages(search, [filled["eid"]], max_results=2)
    assert sorted(r.info.run_id for r in runs) == sorted(filled["ids"])
    assert len(calls) == 3 and calls[0] is None and all(calls[1:])  # 2 + 2 + 1 runs
    assert len(store.search_runs(client, filled["uri"], filled["eid"], "tags.i = '3'")) == 1


def test_the_private_bulk_history_path_still_works_and_matches_the_public_api(filled):
    """If this fails after an MLflow upgrade, the bulk read in ``store.sql_histories`` must be
    adapted (or removed: ``store.histories`` falls back to ``get_metric_history``)."""
    client, ids = filled["client"], filled["ids"]
    fast = store.sql_histories(client, ids, ["val/loss", "train/loss"])
    assert fast is not None, "store.sql_histories no longer reads this MLflow's SQL store"
    slow = store.api_histories(client, ids, ["val/loss", "train/loss"])
    key = ["run_id", "metric", "step", "timestamp"]
    assert list(fast.columns) == list(slow.columns) == store.HISTORY_COLUMNS
    pd.testing.assert_frame_equal(fast.sort_values(key).reset_index(drop=True)[key + ["value"]],
                                  slow.sort_values(key).reset_index(drop=True)[key + ["value"]], check_dtype=False)
    assert len(fast) == 5 * 6
    assert fast.loc[fast["metric"] == "train/loss", "value"].isna().all()  # NaN stays NaN
    # tidy: one value per step, the last logged
    from analysis.frames import tidy_histories

    runs = pd.DataFrame({"run_id": ids, "arm": ["a"] * 5, "seed": range(5)})
    tidy = tidy_histories(fast, runs)
    one = tidy[(tidy["run_id"] == ids[0]) & (tidy["metric"] == "val/loss")].sort_values("step")
    assert one["value"].tolist() == [1.0, 0.5, 1 / 3, 9.0]


def test_missing_sqlite_file_is_one_clear_error(tmp_path):
    with pytest.raises(store.AnalysisError, match="no MLflow store at"):
        store.connect(f"sqlite:///{tmp_path / 'none.db'}")


def test_a_dead_tracking_server_fails_in_seconds_with_one_line(tmp_path):
    with socket.socket() as s:  # bound and released: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "analysis.report", "anything", "--tracking-uri",
                          f"http://127.0.0.1:{port}"], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, timeout=120)
    took = time.monotonic() - t0
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "is not reachable" in lines[0] and str(port) in lines[0], res.stderr
    assert took < 30, f"took {took:.0f} s"  # imports included; MLflow's own retries take minutes
    assert not any(tmp_path.iterdir())  # nothing written
