"""Tasks: shapes, determinism, fixed val and test sets, corpus splitting/caching, bad configs."""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from gmlp_ablate.models.config import ModelConfig
from gmlp_ablate.schema import ConfigError
from gmlp_ablate.tasks import IGNORE_INDEX, build_task, clear_task_cache, task_metrics, task_shape, validate_task
from gmlp_ablate.tasks.charlm import unigram_entropy_bits, unigram_val_bits
from gmlp_ablate.tasks.config import TaskConfig
from gmlp_ablate.tasks.corpus import load_corpus
from gmlp_ablate.tasks.rules import MASK_ID
from gmlp_ablate.tasks.sources import list_source
from gmlp_ablate.trial import TrialConfig, load_trial, validate_trial

REPO = Path(__file__).resolve().parents[1]

STDLIB = Path(sysconfig.get_paths()["stdlib"])
SOURCES = ["textwrap.py", "string.py", "glob.py", "fnmatch.py", "shlex.py", "bisect.py", "heapq.py", "abc.py"]


def _write_corpus(folder: Path, n_files: int = 24, chunk: int = 3000) -> Path:
    """A folder of small real-text files (.py/.txt/.md) plus files that must be ignored."""
    text = b"".join((STDLIB / s).read_bytes() for s in SOURCES)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        ext = (".py", ".txt", ".md")[i % 3]
        sub = folder / f"part{i % 4}"
        sub.mkdir(exist_ok=True)
        (sub / f"f{i:02d}{ext}").write_bytes(text[i * chunk : (i + 1) * chunk])
    (folder / "ignored.bin").write_bytes(b"\x00" * 5000)
    (folder / "latin1.txt").write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e\n".encode("latin-1") * 50)  # not UTF-8
    return folder


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    return _write_corpus(tmp_path_factory.mktemp("corpus") / "text")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("cache"))


def _cfg(name: str, corpus_dir: Path, cache_dir: str, **kw) -> TaskConfig:
    base = dict(name=name, cache_dir=cache_dir)
    if name in ("charlm", "mlm"):
        base.update(corpus=str(corpus_dir), seq_len=32, val_tokens=512)
    if name == "mqar":
        base.update(num_val=64)
    base.update(kw)
    return TaskConfig(**base)


@pytest.fixture(scope="module")
def tasks(corpus_dir, cache_dir):
    return {n: build_task(_cfg(n, corpus_dir, cache_dir), seed=0) for n in ("charlm", "mlm", "mqar", "digits")}


# --------------------------------------------------------------------------------------
# Contract shared by every task
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["charlm", "mlm", "mqar", "digits"])
def test_shapes_dtypes_and_metrics(name, tasks, corpus_dir, cache_dir):
    task = tasks[name]
    assert task.shape == task_shape(_cfg(name, corpus_dir, cache_dir))
    assert "val/loss" in task.metrics and task.metrics[0] != "val/loss"
    assert task.info and all(isinstance(v, str) for v in task.info.values())
    x, y = task.train_batch(3, 8)
    assert y.dtype == torch.int64
    for X, Y in (task.val_set(), task.test_set()):
        assert Y.dtype == torch.int64
        if task.shape.kind == "tokens":
            N = task.shape.seq_len
            assert x.shape == y.shape == (8, N) and x.dtype == torch.int64
            assert X.shape == Y.shape and X.shape[1] == N
            assert 0 <= int(x.min()) and int(x.max()) < task.shape.vocab_size
            scored = Y[Y != IGNORE_INDEX]
            assert len(scored) > 0 and int(scored.max()) < task.shape.vocab_size
        else:
            assert x.shape == (8, 1, 8, 8) and x.dtype == torch.float32 and y.shape == (8,)
            assert X.shape[1:] == (1, 8, 8) and X.dtype == torch.float32 and Y.shape == (len(X),)
            assert task.shape.seq_len == 16 and task.shape.num_classes == 10
    assert set(task.derived_metrics(1.0, 0.5)) == set(task.metrics)
    assert set(task.derived_metrics(1.0, 0.5, "test")) == {m.replace("val/", "test/") for m in task.metrics}
    assert task_metrics(_cfg(name, corpus_dir, cache_dir)) == (
        *task.metrics, *(m.replace("val/", "test/") for m in task.metrics))


@pytest.mark.parametrize("name", ["charlm", "mlm", "mqar", "digits"])
def test_train_batch_is_a_pure_function_of_seed_and_step(name, tasks, corpus_dir, cache_dir):
    task = tasks[name]
    other = build_task(_cfg(name, corpus_dir, cache_dir), seed=1)
    same = build_task(_cfg(name, corpus_dir, cache_dir), seed=0)
    x1, y1 = task.train_batch(5, 16)
    task.train_batch(6, 16)  # no hidden state between calls
    x2, y2 = same.train_batch(5, 16)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(task.train_batch(6, 16)[0], x1)
    assert not torch.equal(other.train_batch(5, 16)[0], x1)



@pytest.mark.parametrize("name", ["charlm", "mlm", "mqar", "digits"])
def test_held_out_sets_are_deterministic(name, tasks, corpus_dir, cache_dir):
    clear_task_cache()  # built again from scratch, not handed the same objects
    again = build_task(_cfg(name, corpus_dir, cache_dir), seed=0)
    for split in ("val", "test"):
        (X1, Y1), (X2, Y2) = tasks[name].held_out(split), again.held_out(split)
        assert X1 is not X2 and torch.equal(X1, X2) and torch.equal(Y1, Y2)


def test_held_out_sets_across_seeds(tasks, corpus_dir, cache_dir):
    for name in ("charlm", "mlm", "digits"):  # fixed for every seed
        other = build_task(_cfg(name, corpus_dir, cache_dir), seed=7)
        for split in ("val", "test"):
            X, Y = other.held_out(split)
            assert torch.equal(X, tasks[name].held_out(split)[0]) and torch.equal(Y, tasks[name].held_out(split)[1])
    # mqar: fixed sets per seed, not the train stream
    X7, _ = build_task(_cfg("mqar", corpus_dir, cache_dir), seed=7).val_set()
    X0, _ = tasks["mqar"].val_set()
    assert not torch.equal(X7, X0)
    assert not torch.equal(tasks["mqar"].train_batch(0, len(X0))[0], X0)


# --------------------------------------------------------------------------------------
# charlm / corpus
# --------------------------------------------------------------------------------------


def test_charlm_windows_and_val_coverage(tasks):
    task = tasks["charlm"]
    x, y = task.train_batch(0, 64)
    assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one
    L = task.shape.seq_len
    for split in ("val", "test"):
        stream = torch.from_numpy(np.asarray(getattr(task.corpus, split), dtype=np.int64))
        X, Y = task.held_out(split)
        assert len(X) == min(512 // L, (len(stream) - 1) // L)
        starts = [int(s) for s in task.data.starts[split]]
        assert all(b - a >= L for a, b in zip(starts, starts[1:]))  # no byte scored twice
        for i, s in enumerate(starts):
            assert torch.equal(X[i], stream[s : s + L]) and torch.equal(Y[i], stream[s + 1 : s + L + 1])


@pytest.mark.parametrize("name", ["charlm", "mlm"])
def test_text_split_by_file_into_three_disjoint_parts(name, tasks, corpus_dir):
    task = tasks[name]
    parts = {"train": task.train_files, "val": task.val_files, "test": task.test_files}
    assert all(parts.values())
    assert not set(parts["train"]) & set(parts["val"])
    assert not set(parts["train"]) & set(parts["test"])
    assert not set(parts["val"]) & set(parts["test"])
    listed = {p.relative_to(corpus_dir).as_posix() for p in corpus_dir.rglob("*") if p.suffix in (".py", ".txt", ".md")}
    listed.remove("latin1.txt")  # skipped: not UTF-8
    assert task.info["corpus_files_skipped"] == "1"
    assert set().union(*map(set, parts.values())) == listed
    sizes = {r: (corpus_dir / r).stat().st_size for r in listed}
    for part, files in parts.items():  # each stream is exactly its files' bytes, in order
        stream = bytes(getattr(task.corpus, part))
        assert stream == b"".join((corpus_dir / r).read_bytes() for r in files)
        assert len(stream) == sum(sizes[r] for r in files)


def test_val_files_do_not_depend_on_the_test_share(corpus_dir, cache_dir):
    a = build_task(_cfg("charlm", corpus_dir, cache_dir, test_fraction=0.1), seed=0)
    b = build_task(_cfg("charlm", corpus_dir, cache_dir, test_fraction=0.3), seed=0)
    assert a.val_files == b.val_files
    assert set(a.test_files) < set(b.test_files)


def test_corpus_disk_cache_and_content_hash(tmp_path):
    folder = _write_corpus(tmp_path / "text", n_files=8, chunk=2000)
    cache = str(tmp_path / "cache")
    first = load_corpus(str(folder), 20_000, 0.2, 0.2, cache)
    assert not first.from_cache and Path(first.cache_path).exists()
    second = load_corpus(str(folder), 20_000, 0.2, 0.2, cache)
    assert second.from_cache and second.sha256 == first.sha256
    for part in ("train", "val", "test"):
        assert np.array_equal(getattr(second, part), getattr(first, part))
    assert isinstance(second.train, np.memmap) or isinstance(second.train.base, np.memmap)
    assert not list(Path(cache, "corpora").glob("*.tmp"))
    # a changed file changes the key and the content hash
    victim = folder / "part0" / "f00.py"
    victim.write_bytes(victim.read_bytes()[::-1])
    third = load_corpus(str(folder), 20_000, 0.2, 0.2, cache)
    assert not third.from_cache and third.sha256 != first.sha256
    # another budget is another corpus
    fourth = load_corpus(str(folder), 9000, 0.2, 0.2, cache)
    assert int(fourth.info()["corpus_bytes"]) == 9000 and fourth.sha256 != third.sha256


def test_second_build_reuses_the_prepared_data(tmp_path):
    folder = _write_corpus(tmp_path / "text", n_files=8, chunk=2000)
    cfg = TaskConfig(name="charlm", corpus=str(folder), seq_len=16, val_tokens=64, cache_dir=str(tmp_path / "c"))
    first = build_task(cfg, seed=0)
    second = build_task(dataclasses.replace(cfg, cache_dir=str(tmp_path / "elsewhere")), seed=1)
    assert second.data is first.data  # same corpus and held-out windows: nothing loaded again
    assert not (tmp_path / "elsewhere").exists()
    assert second.seed == 1 and not torch.equal(second.train_batch(0, 8)[0], first.train_batch(0, 8)[0])
    clear_task_cache()
    rebuilt = build_task(cfg, seed=1)
    assert rebuilt.data is not first.data
    assert torch.equal(rebuilt.train_batch(0, 8)[0], second.train_batch(0, 8)[0])
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.test_set(), second.test_set()))


def test_edited_corpus_is_prepared_again(tmp_path):
    folder = _write_corpus(tmp_path / "text", n_files=8, chunk=2000)
    cfg = TaskConfig(name="mlm", corpus=str(folder), seq_len=16, val_tokens=64, cache_dir=str(tmp_path / "c"))
    first = build_task(cfg, seed=0)
    victim = folder / first.train_files[0]
    victim.write_bytes(victim.read_bytes()[::-1])
    second = build_task(cfg, seed=0)
    assert second.data is not first.data and second.info["corpus_sha256"] != first.info["corpus_sha256"]


def test_concurrent_builds_share_one_cache_entry(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    folder = _write_corpus(tmp_path / "text", n_files=8, chunk=2000)
    cfg = TaskConfig(name="mlm", corpus=str(folder), seq_len=16, val_tokens=64, cache_dir=str(tmp_path / "cache"))
    with ThreadPoolExecutor(4) as pool:
        built = list(pool.map(lambda seed: build_task(cfg, seed), range(4)))
    assert len({t.info["corpus_sha256"] for t in built}) == 1
    assert all(torch.equal(t.val_set()[1], built[0].val_set()[1]) for t in built)
    assert len(list(Path(tmp_path, "cache", "corpora").iterdir())) == 2  # one .npy + one .json, no leftovers


def test_single_file_corpus_cut_at_the_end(tmp_path):
    path = tmp_path / "book.txt"
    data = b"".join((STDLIB / s).read_bytes() for s in SOURCES[:3])
    path.write_bytes(data)
    cfg = TaskConfig(name="charlm", corpus=str(path), seq_len=16, val_tokens=256, val_fraction=0.2,
                     test_fraction=0.1, cache_dir=str(tmp_path))
    task = build_task(cfg, seed=0)
    n_val, n_test = round(len(data) * 0.2), round(len(data) * 0.1)
    assert bytes(task.corpus.val) == data[-n_val:]  # the last val_fraction, as without a test part
    assert bytes(task.corpus.test) == data[-n_val - n_test : -n_val]
    assert bytes(task.corpus.train) == data[: -n_val - n_test]


def test_default_stdlib_corpus(tmp_path):
    cfg = TaskConfig(name="charlm", corpus_bytes=300_000, seq_len=64, val_tokens=4096, cache_dir=str(tmp_path))
    task = build_task(cfg, seed=0)
    assert "python-stdlib" in task.info["corpus"] and len(task.info["corpus_sha256"]) == 64
    assert int(task.info["corpus_bytes"]) == 300_000
    files = task.train_files + task.val_files + task.test_files
    assert task.val_files and task.test_files and len(set(files)) == len(files)
    excluded = {"test", "tests", "idle_test", "site-packages"}
    for rel in files:
        assert rel.endswith(".py") and not excluded & set(rel.split("/")[:-1])
    h = unigram_entropy_bits(task)
    assert 3.0 < h < 8.0
    assert unigram_val_bits(task) < 8.0


def test_unigram_baseline_on_custom_corpus(tasks):
    h = unigram_entropy_bits(tasks["charlm"])
    assert 0.0 < h < 8.0
    bits = unigram_val_bits(tasks["charlm"])
    assert h * 0.9 < bits < 8.0  # held-out text is a little less predictable, far below 8 bits
    assert unigram_val_bits(tasks["mlm"]) < 8.0


def test_seq_len_too_long_for_a_part_fails_validation(tmp_path):
    folder = _write_corpus(tmp_path / "text", n_files=6, chunk=300)
    cfg = TaskConfig(name="charlm", corpus=str(folder), seq_len=2000, val_tokens=4000, cache_dir=str(tmp_path))
    _raises(cfg, "task.seq_len", str(folder), "2001 bytes")
    assert not (tmp_path / "corpora").exists()  # nothing was built


def test_non_utf8_files_found_at_build_time_can_still_fail_the_build(tmp_path):
    """Validation does not read files: one that is not UTF-8 is only dropped by the build."""
    folder = tmp_path / "text"
    folder.mkdir()
    (folder / "a.txt").write_bytes(b"a" * 400)
    (folder / "b.txt").write_bytes(b"b" * 400)
    (folder / "c.txt").write_bytes("\xe9".encode("latin-1") * 400)
    cfg = TaskConfig(name="charlm", corpus=str(folder), seq_len=16, val_tokens=64, cache_dir=str(tmp_path))
    validate_task(cfg)
    with pytest.raises(ConfigError) as e:
        build_task(cfg, seed=0)
    assert e.value.key == "task.corpus" and "only 2 usable file(s)" in str(e.value) and str(folder) in str(e.value)


# --------------------------------------------------------------------------------------
# mlm
# --------------------------------------------------------------------------------------


def test_mlm_mask_statistics(tasks):
    task = tasks["mlm"]
    x, y = task.train_batch(0, 2048)
    L = task.shape.seq_len
    sel = y != IGNORE_INDEX
    k = round(0.15 * L)
    assert (sel.sum(1) == k).all()  # exactly round(mask_prob * L) per window
    assert abs(sel.float().mean().item() - 0.15) < 0.01
    xs, ys = x[sel], y[sel]
    masked = (xs == MASK_ID).float().mean().item()
    kept = (xs == ys).float().mean().item()
    random_other = ((xs != MASK_ID) & (xs != ys)).float().mean().item()
    assert abs(masked - 0.8) < 0.02
    assert abs(kept - (0.1 + 0.1 / 256)) < 0.015
    assert abs(random_other - 0.1 * 255 / 256) < 0.015
    assert int(xs[xs != MASK_ID].max()) < 256
    assert not (x[~sel] == MASK_ID).any()
    # unpredicted positions carry the original bytes: compare with an unmasked window
    X, Y = task.val_set()
    val = torch.from_numpy(np.asarray(task.corpus.val, dtype=np.int64))
    s = int(task.data.starts["val"][0])
    orig = val[s : s + L]
    vsel = Y[0] != IGNORE_INDEX
    assert torch.equal(X[0][~vsel], orig[~vsel]) and torch.equal(Y[0][vsel], orig[vsel])


# --------------------------------------------------------------------------------------
# mqar
# --------------------------------------------------------------------------------------


def test_mqar_semantics(corpus_dir, cache_dir):
    cfg = _cfg("mqar", corpus_dir, cache_dir, num_kv_pairs=6, vocab_size=64, seq_len=40)
    task = build_task(cfg, seed=3)
    K, V, N = 6, 64, 40
    for x, y in (task.train_batch(0, 256), task.val_set()):
        assert x.shape[1] == N
        scored = y != IGNORE_INDEX
        assert (scored.sum(1) == K).all()
        for xi, yi in zip(x.tolist(), y.tolist()):
            keys, vals = xi[0 : 2 * K : 2], xi[1 : 2 * K : 2]
            assert len(set(keys)) == K and all(1 <= k < V // 2 for k in keys)
            assert len(set(vals)) == K and all(V // 2 <= v < V for v in vals)
            pairs = dict(zip(keys, vals))
            positions = [p for p, t in enumerate(yi) if t != IGNORE_INDEX]
            assert all(p >= 2 * K and p + 1 < N for p in positions)
            assert sorted(xi[p] for p in positions) == sorted(keys)  # each key queried once
            for p in positions:
                assert yi[p] == pairs[xi[p]] and xi[p + 1] == yi[p]
            rest = [t for p, t in enumerate(xi[2 * K :], 2 * K) if p not in positions and p - 1 not in positions]
            assert set(rest) <= {0}


def test_mqar_queries_follow_a_power_law(corpus_dir, cache_dir):
    task = build_task(_cfg("mqar", corpus_dir, cache_dir, num_kv_pairs=4, seq_len=128), seed=0)
    _, y = task.train_batch(0, 2000)
    gaps = ((y != IGNORE_INDEX).nonzero()[:, 1] - 8) // 2
    counts = torch.bincount(gaps, minlength=60).float()
    assert counts[:10].sum() > counts[10:20].sum() > counts[50:60].sum()  # decreasing with distance
    assert counts[50:].sum() > 0  # with a long tail


def test_mqar_query_order_does_not_follow_the_context_order(corpus_dir, cache_dir):
    """The i-th query asks for the i-th context key only by chance (1/K), so the answer
    cannot be read off a fixed position: the model has to recall by content."""
    K = 4
    task = build_task(_cfg("mqar", corpus_dir, cache_dir, num_kv_pairs=K, seq_len=64), seed=0)
    x, y = task.train_batch(0, 2000)
    same = 0
    for xi, yi in zip(x.tolist(), y.tolist()):
        keys = xi[0 : 2 * K : 2]
        queried = [xi[p] for p, t in enumerate(yi) if t != IGNORE_INDEX]
        same += sum(q == k for q, k in zip(queried, keys))
    assert abs(same / (2000 * K) - 1 / K) < 0.03


# --------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------


def test_digits_split_is_stratified_three_ways_and_disjoint(tasks):
    task = tasks["digits"]
    train, val, test = (set(i.tolist()) for i in (task.train_idx, task.val_idx, task.test_idx))
    assert not train & val and not train & test and not val & test
    assert len(train) + len(val) + len(test) == 1797
    assert len(val) == len(test) == math.ceil(0.1 * 1797)
    all_labels = torch.cat([task._train_y, task.val_set()[1], task.test_set()[1]])
    for _, Y in (task.val_set(), task.test_set()):
        counts = torch.bincount(Y, minlength=10).float()
        expected = torch.bincount(all_labels, minlength=10).float() * len(Y) / len(all_labels)
        assert (counts - expected).abs().max() <= 1.0


def test_digits_val_split_does_not_depend_on_the_test_share():
    a = build_task(TaskConfig(name="digits", test_fraction=0.1), seed=0)
    b = build_task(TaskConfig(name="digits", test_fraction=0.2), seed=0)
    assert np.array_equal(a.val_idx, b.val_idx) and torch.equal(a.val_set()[1], b.val_set()[1])
    assert set(a.test_idx.tolist()) != set(b.test_idx.tolist())


def test_mqar_test_examples_differ_from_val_and_train(tasks):
    task = tasks["mqar"]
    val = {tuple(r) for r in task.val_set()[0].tolist()}
    test = {tuple(r) for r in task.test_set()[0].tolist()}
    train = {tuple(r) for r in task.train_batch(0, 256)[0].tolist()}
    assert len(test) == len(task.test_set()[0]) == 64
    assert not test & val and not test & train


def test_digits_epochs_cover_the_train_split(tasks):
    task = tasks["digits"]
    n = len(task.train_idx)
    rows = torch.cat([task.train_indices(s, 50) for s in range(math.ceil(2 * n / 50))])
    assert sorted(rows[:n].tolist()) == list(range(n))  # each example once per epoch
    assert sorted(rows[n : 2 * n].tolist()) == list(range(n))
    x, _ = task.train_batch(0, 512)
    assert abs(x.mean().item()) < 0.1 and abs(x.std().item() - 1) < 0.1


@pytest.mark.parametrize("patch,n", [(1, 64), (2, 16), (4, 4), (8, 1)])
def test_digits_patch_sizes(patch, n):
    cfg = TaskConfig(name="digits", patch_size=patch)
    validate_task(cfg)
    assert task_shape(cfg).seq_len == n and task_shape(cfg).patch_size == patch


# --------------------------------------------------------------------------------------
# Bad configs
# --------------------------------------------------------------------------------------


def _raises(cfg: TaskConfig, key: str, *fragments: str) -> None:
    with pytest.raises(ConfigError) as e:
        validate_task(cfg)
    assert e.value.key == key, str(e.value)
    for f in fragments:
        assert f in str(e.value)


def test_bad_corpus_paths(tmp_path):
    missing = str(tmp_path / "nope")
    _raises(TaskConfig(name="charlm", corpus=missing), "task.corpus", missing)
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    _raises(TaskConfig(name="mlm", corpus=str(empty_dir)), "task.corpus", str(empty_dir))
    other = tmp_path / "binaries"
    other.mkdir()
    (other / "a.bin").write_bytes(b"abc")
    _raises(TaskConfig(name="charlm", corpus=str(other)), "task.corpus", str(other))
    empty_file = tmp_path / "empty.txt"
    empty_file.write_bytes(b"")
    _raises(TaskConfig(name="charlm", corpus=str(empty_file)), "task.corpus", str(empty_file), "empty")
    with pytest.raises(ConfigError) as e:  # the build says the same
        build_task(TaskConfig(name="charlm", corpus=missing, cache_dir=str(tmp_path)), seed=0)
    assert e.value.key == "task.corpus" and missing in str(e.value)
    with pytest.raises(ConfigError) as e:
        list_source(str(empty_file))
    assert e.value.key == "task.corpus"


def _small_corpus(tmp_path: Path, kind: str) -> Path:
    if kind == "1 byte":
        (tmp_path / "one.txt").write_bytes(b"a")
        return tmp_path / "one.txt"
    if kind == "20 bytes":
        (tmp_path / "twenty.txt").write_bytes(b"x = 1\n" * 3 + b"ab")
        return tmp_path / "twenty.txt"
    folder = tmp_path / "two"
    folder.mkdir()
    for name in ("a.txt", "b.md"):
        (folder / name).write_bytes(b"hello world\n" * 100)
    return folder


@pytest.mark.parametrize(
    "name, kind, seq_len, key, fragment",
    [
        ("charlm", "1 byte", None, "task.corpus", "1 byte(s) cannot be cut into train, val and test"),
        ("charlm", "20 bytes", None, "task.seq_len", "needs windows of 129 bytes"),
        ("mlm", "20 bytes", None, "task.seq_len", "needs windows of 128 bytes"),
        ("charlm", "2 files", 16, "task.corpus", "only 2 non-empty file(s)"),
    ],
)
def test_corpus_too_small_fails_validation_naming_the_path(tmp_path, name, kind, seq_len, key, fragment):
    path = _small_corpus(tmp_path, kind)
    _raises(TaskConfig(name=name, corpus=str(path), seq_len=seq_len, cache_dir=str(tmp_path)), key, str(path),
            fragment)


def test_stdlib_budget_too_small_for_three_parts_names_corpus_bytes():
    _raises(TaskConfig(name="charlm", corpus_bytes=1), "task.corpus_bytes", "python-stdlib", "at least 3")


def _validate_unprivileged(corpus: str, readable: Path) -> subprocess.CompletedProcess:
    """Validate a corpus path in a fresh process without root's power to read anything. The
    package is copied into ``readable`` (a folder any user may enter), since the checkout may
    sit in a folder only its owner can enter; validation needs nothing outside the package."""
    src = readable / "src"
    shutil.copytree(REPO / "gmlp_ablate", src / "gmlp_ablate", ignore=shutil.ignore_patterns("__pycache__"))
    for p in [src, *src.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    code = ("import sys\nfrom gmlp_ablate.schema import ConfigError\nfrom gmlp_ablate.tasks import validate_task\n"
            "from gmlp_ablate.tasks.config import TaskConfig\ntry:\n"
            f"    validate_task(TaskConfig(name='charlm', corpus={corpus!r}))\n"
            "except ConfigError as e:\n    print(e.key)\n    print(e)\n    sys.exit(2)\n")
    prefix = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: no unprivileged user to check permissions with")
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    return subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd="/", env={**os.environ, "PYTHONPATH": str(src)})


@pytest.fixture
def shared_dir():
    """A folder any user may enter (pytest's own are private to their owner)."""
    d = Path(tempfile.mkdtemp(prefix="gmlp_ablate_perm_"))
    d.chmod(0o755)
    yield d
    for p in [d, *d.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    shutil.rmtree(d)


@pytest.mark.parametrize("kind", ["file", "folder", "files in a folder"])
def test_unreadable_corpus_names_the_cause(kind, shared_dir):
    target = shared_dir / "corpus"
    if kind == "file":
        target = shared_dir / "book.txt"
        target.write_text("some text\n" * 100)
        target.chmod(0o000)
    else:
        target.mkdir()
        for name in ("a.txt", "b.txt", "c.txt"):
            (target / name).write_text("some text\n" * 100)
            if kind == "files in a folder":
                (target / name).chmod(0o000)
        if kind == "folder":
            target.chmod(0o000)
    proc = _validate_unprivileged(str(target), shared_dir)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    key, message = proc.stdout.strip().splitlines()
    assert key == "task.corpus" and str(target) in message and "Permission denied" in message
    assert "holds no" not in message


@pytest.mark.parametrize(
    "cfg, key, fragment",
    [
        (TaskConfig(name="digits", patch_size=3), "task.patch_size", "divisible"),
        (TaskConfig(name="digits", patch_size=2, seq_len=64), "task.seq_len", "16"),
        (TaskConfig(name="mqar", num_kv_pairs=8, seq_len=30), "task.seq_len", "32"),
        (TaskConfig(name="mqar", num_kv_pairs=20), "task.num_kv_pairs", "80"),  # default seq_len 64
        (TaskConfig(name="mqar", num_kv_pairs=8, vocab_size=16), "task.vocab_size", "18"),
        (TaskConfig(name="charlm", seq_len=1), "task.seq_len", ">= 2"),
        (TaskConfig(name="charlm", val_tokens=64, seq_len=128), "task.val_tokens", "128"),
        (TaskConfig(name="charlm", val_fraction=0.5, test_fraction=0.5), "task.test_fraction", "< 1"),
        (TaskConfig(name="digits", test_fraction=0.004), "task.test_fraction", "at least 10"),
        (TaskConfig(name="digits", val_fraction=0.004), "task.val_fraction", "at least 10"),
    ],
)
def test_task_rules(cfg, key, fragment):
    _raises(cfg, key, fragment)


@pytest.mark.parametrize(
    "cfg, key",
    [
        (TaskConfig(name="mqar", num_val=0), "task.num_val"),
        (TaskConfig(name="mlm", mask_prob=0.0), "task.mask_prob"),
        (TaskConfig(name="mlm", mask_prob=1.0), "task.mask_prob"),
        (TaskConfig(name="charlm", val_fraction=0.0), "task.val_fraction"),
        (TaskConfig(name="digits", test_fraction=1.0), "task.test_fraction"),
        (TaskConfig(name="charlm", corpus_bytes=0), "task.corpus_bytes"),
        (TaskConfig(name="digits", patch_size=0), "task.patch_size"),
        (TaskConfig(name="nope"), "task.name"),  # type: ignore[arg-type]
    ],
)
def test_declared_bounds_are_checked_by_validate_task(cfg, key):
    _raises(cfg, key)


def test_errors_name_the_key_under_the_prefix():
    with pytest.raises(ConfigError) as e:
        validate_task(TaskConfig(name="mqar", num_kv_pairs=8, vocab_size=16), prefix="grid[a].task.")
    assert e.value.key == "grid[a].task.vocab_size"


def test_validation_and_metric_names_do_not_import_torch():
    code = ("import sys\nfrom gmlp_ablate.tasks import validate_task\nfrom gmlp_ablate.tasks.config import TaskConfig\n"
            "from gmlp_ablate.tasks import task_metrics\n"
            "for name in ('charlm', 'mlm', 'mqar', 'digits'):\n    validate_task(TaskConfig(name=name))\n"
            "    assert task_metrics(TaskConfig(name=name))\n"
            "print(sorted(m for m in ('torch', 'numpy', 'sklearn') if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_trial_validation_uses_the_task_checks():
    validate_trial(TrialConfig())  # the default (stdlib charlm) validates without reading data
    for name in ("mlm", "mqar", "digits"):
        validate_trial(TrialConfig(task=TaskConfig(name=name), model=ModelConfig(arch="transformer")))
    with pytest.raises(ConfigError) as e:
        load_trial(overrides=["task.name=digits", "task.patch_size=3"])
    assert e.value.key == "task.patch_size"


def test_task_shapes_without_data():
    assert task_shape(TaskConfig(name="charlm")).seq_len == 128
    s = task_shape(TaskConfig(name="mlm", seq_len=64))
    assert (s.seq_len, s.vocab_size, s.causal) == (64, 257, False)
    s = task_shape(TaskConfig(name="mqar"))
    assert (s.seq_len, s.vocab_size, s.causal) == (64, 256, True)
    assert task_shape(TaskConfig(name="charlm")).causal and task_shape(TaskConfig(name="charlm")).vocab_size == 256
