"""The train-batch loader: row-wise cuts equal the per-token gather, and prefetching
(``train.prefetch``, ``tcsm_jax/data/prefetch.py``) changes nothing about the batches
and leaves no thread behind."""

import threading
import time

import numpy as np
import pytest

from tcsm_jax import errors
from tcsm_jax.data import base, prefetch, prepared, tokenizer
from tcsm_jax.training import partition

import helpers


def _threads():
  return [t for t in threading.enumerate() if t.name.startswith("tcsm-prefetch")]


def test_row_cut_equals_per_token_gather(tmp_path):
  rng = np.random.default_rng(0)
  prepared.write_shards(str(tmp_path / "p"), {"train": rng.integers(0, 27, 50_000),
                                              "validation": rng.integers(0, 27, 1000)},
                        tokenizer.CharTokenizer())
  ds = prepared.load(str(tmp_path / "p"))
  assert base._file_of(ds.train) and not base._file_of(ds.train[48:])
  # A whole shard (read with preadv), a view of it (the map), an in-memory array.
  for tokens in (ds.train, ds.train[48:], np.asarray(ds.train, np.int32)):
    for pi, pc in ((0, 1), (1, 2)):
      s = base.ChunkSampler(tokens, 48, 8, seed=5, process_index=pi, process_count=pc)
      for step in (0, 3, 140):          # 140: crosses an epoch boundary
        starts = s.indices(step) * 48
        want = np.asarray(tokens)[starts[:, None] + np.arange(48)].astype(np.int32)
        got = s.batch(step)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, want)
  # A shard that shrank after it was loaded is an error naming it, never a SIGBUS.
  s = base.ChunkSampler(ds.train, 48, 8)
  with open(ds.train.filename, "r+b") as f:
    f.truncate(0)
  with pytest.raises(errors.DataError, match="train.bin.*short read"):
    s.batch(0)


def test_prefetched_batches_equal_unprefetched_and_no_thread_leaks():
  tokens = np.arange(40_000) % 27
  sampler = base.ChunkSampler(tokens, 32, 16, seed=7)
  mesh = partition.make_mesh(1)
  sh = partition.batch_sharding(mesh)
  produce = lambda s: partition.to_global(sampler.batch(s), sh)
  plain = [np.asarray(produce(s)) for s in range(5, 25)]
  with prefetch.Prefetcher(produce, 5, 25, depth=3) as p:
    assert _threads()
    got = [np.asarray(b) for b in p]
  for a, b in zip(plain, got):     # same batches, same order, bit for bit
    assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
  assert len(got) == 20 and not _threads()
  # Early exit (break, error in the loop): the thread stops while blocked on a full queue.
  with prefetch.Prefetcher(produce, 0, 10_000, depth=2) as p:
    for s in range(3):
      np.testing.assert_array_equal(np.asarray(p.get(s)), sampler.batch(s))
    time.sleep(0.05)
  assert not p.alive and not _threads()
  with pytest.raises(ValueError, match="expected 1"):   # order is enforced
    with prefetch.Prefetcher(produce, 0, 10, depth=1) as p:
      p.get(0)
      p.get(2)
  assert not _threads()
  # depth 0: no thread, same items.
  p = prefetch.Prefetcher(produce, 5, 8, depth=0)
  assert not _threads()
  np.testing.assert_array_equal(np.asarray(p.get(5)), plain[0])


def test_prefetch_raises_the_loaders_error_at_its_step():
  def produce(s):
    if s == 3:
      raise errors.DataError("shard rotted at step 3")
    return s
  p = prefetch.Prefetcher(produce, 0, 10, depth=4)
  assert [p.get(s) for s in range(3)] == [0, 1, 2]
  with pytest.raises(errors.DataError, match="step 3"):
    p.get(3)
  assert not p.alive and not _threads()


def test_trainer_batches_identical_with_and_without_prefetch(tmp_path, monkeypatch):
  """The trainer's own batches, recorded where they go to the devices."""
  seen = {}
  real = partition.to_global

  def recording(local, sharding):
    seen.setdefault(key, []).append((threading.current_thread().name,
                                     np.array(local)))
    return real(local, sharding)

  monkeypatch.setattr(partition, "to_global", recording)
  from tcsm_jax.training import trainer
  for key in (0, 2):
    c = helpers.tiny_config(**{"train.prefetch": key, "train.num_steps": 8,
                               "train.log_every": 3})
    trainer.train_and_evaluate(c, str(tmp_path / f"p{key}"), stop_at_step=6)
  a, b = seen[0], seen[2]
  assert len(a) == len(b) == 7           # the compile's batch, then steps 0..5
  for (_, x), (_, y) in zip(a, b):
    assert x.tobytes() == y.tobytes()
  assert {t for t, _ in b[1:]} == {"tcsm-prefetch"}
  assert {t for t, _ in a} == {threading.main_thread().name}
  assert not _threads()
