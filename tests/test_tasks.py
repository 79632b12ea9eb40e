"""Tasks: shapes, determinism, fixed validation sets, corpus splitting/caching, bad configs."""

from __future__ import annotations

import dataclasses
import math
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from gmlp_ablate.config import ConfigError, ModelConfig, TaskConfig, TrialConfig, load_trial, validate_trial
from gmlp_ablate.tasks import IGNORE_INDEX, build_task, task_shape, validate_task
from gmlp_ablate.tasks.charlm import unigram_entropy_bits, unigram_val_bits
from gmlp_ablate.tasks.corpus import list_source
from gmlp_ablate.tasks.mlm import MASK_ID

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
    X, Y = task.val_set()
    assert y.dtype == torch.int64 and Y.dtype == torch.int64
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
    X1, Y1 = task.val_set()
    X2, Y2 = same.val_set()
    assert torch.equal(X1, X2) and torch.equal(Y1, Y2)


def test_validation_sets_across_seeds(tasks, corpus_dir, cache_dir):
    for name in ("charlm", "mlm", "digits"):  # fixed for every seed
        X, Y = build_task(_cfg(name, corpus_dir, cache_dir), seed=7).val_set()
        assert torch.equal(X, tasks[name].val_set()[0]) and torch.equal(Y, tasks[name].val_set()[1])
    # mqar: a fixed set per seed, not the train stream
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
    val = torch.from_numpy(np.asarray(task.corpus.val, dtype=np.int64))
    X, Y = task.val_set()
    L = task.shape.seq_len
    assert len(X) == min(512 // L, (len(val) - 1) // L)
    starts = [int(s) for s in task._val_starts]
    assert all(b - a >= L for a, b in zip(starts, starts[1:]))  # no byte scored twice
    for i, s in enumerate(starts):
        assert torch.equal(X[i], val[s : s + L]) and torch.equal(Y[i], val[s + 1 : s + L + 1])


def test_charlm_split_by_file(tasks, corpus_dir):
    task = tasks["charlm"]
    assert task.train_files and task.val_files
    assert not set(task.train_files) & set(task.val_files)
    listed = {p.relative_to(corpus_dir).as_posix() for p in corpus_dir.rglob("*") if p.suffix in (".py", ".txt", ".md")}
    listed.remove("latin1.txt")  # skipped: not UTF-8
    assert task.info["corpus_files_skipped"] == "1"
    assert set(task.train_files) | set(task.val_files) == listed
    sizes = {r: (corpus_dir / r).stat().st_size for r in listed}
    assert len(task.corpus.train) == sum(sizes[r] for r in task.train_files)
    assert len(task.corpus.val) == sum(sizes[r] for r in task.val_files)
    assert bytes(task.corpus.val[:100]) == (corpus_dir / task.val_files[0]).read_bytes()[:100]


def test_corpus_cache_and_content_hash(tmp_path):
    folder = _write_corpus(tmp_path / "text", n_files=8, chunk=2000)
    cache = str(tmp_path / "cache")
    cfg = TaskConfig(name="charlm", corpus=str(folder), seq_len=16, val_tokens=64, cache_dir=cache)
    first = build_task(cfg, seed=0)
    assert not first.corpus.from_cache and Path(first.info["corpus_cache"]).exists()
    second = build_task(cfg, seed=0)
    assert second.corpus.from_cache
    assert second.info["corpus_sha256"] == first.info["corpus_sha256"]
    assert torch.equal(second.val_set()[0], first.val_set()[0])
    assert isinstance(second.corpus.train, np.memmap) or isinstance(second.corpus.train.base, np.memmap)
    assert not list(Path(cache, "corpora").glob("*.tmp"))
    # a changed file changes the key and the content hash
    victim = folder / "part0" / "f00.py"
    victim.write_bytes(victim.read_bytes()[::-1])
    third = build_task(cfg, seed=0)
    assert not third.corpus.from_cache
    assert third.info["corpus_sha256"] != first.info["corpus_sha256"]
    # another budget is another corpus
    fourth = build_task(dataclasses.replace(cfg, corpus_bytes=9000), seed=0)
    assert int(fourth.info["corpus_bytes"]) == 9000
    assert fourth.info["corpus_sha256"] != third.info["corpus_sha256"]


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
    cfg = TaskConfig(name="charlm", corpus=str(path), seq_len=16, val_tokens=256, val_fraction=0.2, cache_dir=str(tmp_path))
    task = build_task(cfg, seed=0)
    n_val = round(len(data) * 0.2)
    assert bytes(task.corpus.val) == data[-n_val:]
    assert bytes(task.corpus.train) == data[:-n_val]


def test_default_stdlib_corpus(tmp_path):
    cfg = TaskConfig(name="charlm", corpus_bytes=300_000, seq_len=64, val_tokens=4096, cache_dir=str(tmp_path))
    task = build_task(cfg, seed=0)
    assert "python-stdlib" in task.info["corpus"] and len(task.info["corpus_sha256"]) == 64
    assert int(task.info["corpus_bytes"]) == 300_000
    assert not set(task.train_files) & set(task.val_files)
    excluded = {"test", "tests", "idle_test", "site-packages"}
    for rel in task.train_files + task.val_files:
        assert rel.endswith(".py") and not excluded & set(rel.split("/")[:-1])
    again = build_task(cfg, seed=0)
    assert again.corpus.from_cache and again.info["corpus_sha256"] == task.info["corpus_sha256"]
    h = unigram_entropy_bits(task)
    assert 3.0 < h < 8.0
    assert unigram_val_bits(task) < 8.0


def test_unigram_baseline_on_custom_corpus(tasks):
    h = unigram_entropy_bits(tasks["charlm"])
    assert 0.0 < h < 8.0
    bits = unigram_val_bits(tasks["charlm"])
    assert h * 0.9 < bits < 8.0  # held-out text is a little less predictable, far below 8 bits
    assert unigram_val_bits(tasks["mlm"]) < 8.0


def test_seq_len_too_long_for_val_stream(tmp_path):
    folder = _write_corpus(tmp_path / "text", n_files=6, chunk=300)
    cfg = TaskConfig(name="charlm", corpus=str(folder), seq_len=2000, val_tokens=4000, cache_dir=str(tmp_path))
    validate_task(cfg)  # only the build can know the sizes
    with pytest.raises(ConfigError) as e:
        build_task(cfg, seed=0)
    assert e.value.key == "task.seq_len" and "val split" in str(e.value)


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
    s = int(task._val_starts[0])
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


def test_digits_split_is_stratified_and_disjoint(tasks):
    task = tasks["digits"]
    assert not set(task.train_idx.tolist()) & set(task.val_idx.tolist())
    assert len(task.train_idx) + len(task.val_idx) == 1797
    _, Y = task.val_set()
    all_labels = torch.cat([task._train_y, Y])
    val_counts = torch.bincount(Y, minlength=10).float()
    expected = torch.bincount(all_labels, minlength=10).float() * len(Y) / len(all_labels)
    assert (val_counts - expected).abs().max() <= 1.0


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


def test_bad_values():
    _raises(TaskConfig(name="digits", patch_size=3), "task.patch_size")
    _raises(TaskConfig(name="digits", patch_size=2, seq_len=64), "task.seq_len", "16")
    _raises(TaskConfig(name="mqar", num_kv_pairs=8, seq_len=30), "task.seq_len", "32")
    _raises(TaskConfig(name="mqar", num_kv_pairs=20), "task.num_kv_pairs")  # default seq_len 64 < 80
    _raises(TaskConfig(name="mqar", num_kv_pairs=8, vocab_size=16), "task.vocab_size")
    _raises(TaskConfig(name="mqar", num_val=0), "task.num_val")
    _raises(TaskConfig(name="mlm", mask_prob=0.0), "task.mask_prob")
    _raises(TaskConfig(name="mlm", mask_prob=1.0), "task.mask_prob")
    _raises(TaskConfig(name="charlm", seq_len=1), "task.seq_len")
    _raises(TaskConfig(name="charlm", val_fraction=0.0), "task.val_fraction")
    _raises(TaskConfig(name="digits", val_fraction=1.0), "task.val_fraction")
    _raises(TaskConfig(name="charlm", corpus_bytes=0), "task.corpus_bytes")
    _raises(TaskConfig(name="charlm", val_tokens=64, seq_len=128), "task.val_tokens")
    _raises(TaskConfig(name="nope"), "task.name")
    with pytest.raises(ConfigError) as e:
        validate_task(TaskConfig(name="mqar"), ModelConfig(arch="rnn"), prefix="grid[a].task.")
    assert e.value.key == "grid[a].model.arch"


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
