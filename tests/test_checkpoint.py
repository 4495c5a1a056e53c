"""Checkpoint safety: integrity fingerprints (bit rot falls back to an older step),
rotation that never deletes the last good or the best state, layout-independent
fingerprints (8 devices <-> 1), truncated/deleted files, pre-fingerprint checkpoints."""

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from tcsm_jax.training import checkpoint as ckpt_lib


def _state(seed, n=32):
  rng = np.random.default_rng(seed)
  return {"w": jnp.asarray(rng.standard_normal((n, n), np.float32)),
          "b": jnp.asarray(rng.standard_normal(n, np.float32)),
          "h": jnp.arange(n, dtype=jnp.bfloat16) + seed, "count": jnp.int32(seed)}


def _abstract(state):
  return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)


def _files(step_dir):
  out = []
  for root, _, files in os.walk(os.path.join(step_dir, "state")):
    out += [os.path.join(root, f) for f in files]
  return sorted(out, key=os.path.getsize)


def _flip_64_bytes(step_dir, offset=None):
  """Flips 64 bytes of the step's largest array data file (same size), at ``offset``
  (default: the middle)."""
  path = _files(step_dir)[-1]
  size = os.path.getsize(path)
  at = size // 2 if offset is None else offset
  with open(path, "r+b") as f:
    f.seek(at)
    b = f.read(64)
    f.seek(at)
    f.write(bytes(x ^ 0x5A for x in b))
  assert os.path.getsize(path) == size


def _two_steps(tmp_path):
  """``(directory, state 1, state 2)``: a checkpointer's directory with steps 1 and 2."""
  d = str(tmp_path / "ck")
  ck = ckpt_lib.Checkpointer(d, max_to_keep=3)
  s1, s2 = _state(1), _state(2)
  ck.save(1, s1, {"step": 1})
  ck.save(2, s2, {"step": 2})
  ck.close()
  return d, s1, s2


def _assert_tree_equal(a, b):
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _warnings(caplog):
  return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


def test_flipped_bytes_fall_back_to_older_good_step(tmp_path, caplog):
  d, s1, s2 = _two_steps(tmp_path)
  _flip_64_bytes(os.path.join(d, "2"))
  # The flipped chunk decodes: plain orbax loads wrong values without complaint.
  raw = ocp.CheckpointManager(d).restore(2, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(_abstract(s1))))
  assert not np.array_equal(np.asarray(raw.state["w"]), np.asarray(s2["w"]))

  ck = ckpt_lib.Checkpointer(d)
  with caplog.at_level(logging.WARNING):
    restored, meta, step = ck.restore(_abstract(s1))
  assert step == 1 and meta == {"step": 1}
  _assert_tree_equal(restored, s1)
  log = _warnings(caplog)
  assert "step 2 is corrupt" in log and "fingerprint mismatch" in log and "['w']" in log
  # An explicit request for the corrupt step does not fall back.
  with pytest.raises(ckpt_lib.CheckpointError, match="step 2: corrupt"):
    ck.restore(_abstract(s1), step=2)
  # No good step left: a clear error naming the directory.
  _flip_64_bytes(os.path.join(d, "1"))
  with pytest.raises(ckpt_lib.CheckpointError, match=f"{d} could be restored"):
    ck.restore(_abstract(s1))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_undecodable_chunk_is_one_line_and_falls_back(tmp_path, caplog):
  """Bytes flipped on a chunk's encoding (offset 0 of the largest data file) fail to
  decode instead of decoding wrong: the step is reported unreadable in one line, without
  TensorStore's multi-line spec dump, and the older step is restored."""
  d, s1, _ = _two_steps(tmp_path)
  _flip_64_bytes(os.path.join(d, "2"), offset=0)
  ck = ckpt_lib.Checkpointer(d)
  with caplog.at_level(logging.WARNING):
    restored, meta, step = ck.restore(_abstract(s1))
  assert step == 1 and meta == {"step": 1}
  _assert_tree_equal(restored, s1)
  lines = [r.getMessage() for r in caplog.records if "step 2 is unreadable" in
           r.getMessage()]
  assert len(lines) == 1 and "trying an older step" in lines[0], _warnings(caplog)
  assert "\n" not in lines[0] and "TensorStore details" not in lines[0], lines[0]
  # orbax leaves the failed read's coroutines to the garbage collector: collect them
  # here (their "Exception ignored" warnings) rather than in the next test.
  import gc  # pylint: disable=import-outside-toplevel
  gc.collect()


def test_bad_saves_never_rotate_out_last_good(tmp_path, caplog):
  d = str(tmp_path / "ck")
  ck = ckpt_lib.Checkpointer(d, max_to_keep=2)
  for s in range(1, 9):   # steps 4..8 diverged: the caller flags them not good
    ck.save(s, _state(s), {"step": s}, good=s <= 3)
  ck.wait()
  assert ck.all_steps() == [3, 7, 8]
  assert ck.good_steps() == [3] and ck.latest_good_step() == 3
  ck.close()

  ck = ckpt_lib.Checkpointer(d, max_to_keep=2)    # the flags survive a restart
  assert ck.good_steps() == [3]
  with caplog.at_level(logging.WARNING):
    restored, meta, step = ck.restore(_abstract(_state(0)))
  assert step == 3 and meta == {"step": 3}
  _assert_tree_equal(restored, _state(3))
  _, _, newest = ck.restore(_abstract(_state(0)), prefer_good=False)
  assert newest == 8 and "not marked good" in _warnings(caplog)

  # Resumed from step 3, the run saves step 4: the abandoned bad steps 7, 8 go, and
  # rotation works on the new timeline.
  ck.save(4, _state(40), {"step": 4})
  ck.save(5, _state(50), {"step": 5})
  ck.wait()
  assert ck.all_steps() == [4, 5] and ck.latest_good_step() == 5
  ck.close()


def test_non_finite_state_is_never_good(tmp_path, caplog):
  d = str(tmp_path / "ck")
  ck = ckpt_lib.Checkpointer(d, max_to_keep=1, async_save=False)
  ck.save(1, _state(1), {"step": 1})
  nan = dict(_state(2), w=jnp.full((32, 32), jnp.nan))
  with caplog.at_level(logging.WARNING):
    ck.save(2, nan, {"step": 2})          # the caller says good; the values say no
    ck.save(3, nan, {"step": 3}, metric=1.0)
  assert "step 2" in _warnings(caplog) and "non-finite values in 1 leaves (first ['w'])" \
      in _warnings(caplog)
  assert ck.all_steps() == [1, 3] and ck.good_steps() == [1]
  _, _, step = ck.restore(_abstract(nan))
  assert step == 1
  # Even when asked for the newest step first, NaN parameters are refused.
  _, _, step = ck.restore(_abstract(nan), prefer_good=False)
  assert step == 1


def test_best_metric_step_is_kept(tmp_path, caplog):
  d = str(tmp_path / "ck")
  ck = ckpt_lib.Checkpointer(d, max_to_keep=2, max_metric_ratio=4.0)
  for s, nll in zip(range(1, 7), [5.0, 2.0, 4.0, None, 6.0, 7.0]):
    ck.save(s, _state(s), {"step": s}, metric=nll)
  ck.wait()
  assert ck.best_step() == 2 and ck.all_steps() == [2, 5, 6]
  with caplog.at_level(logging.WARNING):
    ck.save(7, _state(7), {"step": 7}, metric=1e5)   # > 4 x best: not good
    ck.save(8, _state(8), {"step": 8}, metric=float("nan"))
  ck.wait()
  assert "4 x best" in _warnings(caplog)
  assert ck.all_steps() == [2, 6, 7, 8] and ck.latest_good_step() == 6
  ck.close()
  ck = ckpt_lib.Checkpointer(d, max_to_keep=2)
  assert ck.best_step() == 2 and ck.good_steps() == [2, 6]
  assert ck.restore(_abstract(_state(0)))[2] == 6


def _mesh8():
  return Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "fsdp"))


def test_fingerprint_is_layout_independent_8_to_1_and_back(tmp_path):
  assert jax.device_count() >= 8
  mesh = _mesh8()
  specs = {"w": P("data", "fsdp"), "b": P("fsdp"), "h": P(("data", "fsdp")),
           "count": P()}
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  ref = _state(3)
  sh8 = {k: NamedSharding(mesh, v) for k, v in specs.items()}
  sh1 = {k: one for k in specs}
  s8 = jax.device_put(ref, sh8)
  s1 = jax.device_put(ref, sh1)
  assert s8["w"].sharding.num_devices == 8 and len(s8["w"].addressable_shards) == 8
  fp8, fin8 = ckpt_lib.fingerprint(s8)
  assert ckpt_lib.fingerprint(s1) == (fp8, fin8)
  assert all(fin8.values()) and set(fp8) == {"['w']", "['b']", "['h']", "['count']"}
  # Any change of one element changes the fingerprint of its leaf only.
  fp_mod, _ = ckpt_lib.fingerprint(dict(ref, w=ref["w"].at[7, 9].add(1e-6)))
  assert fp_mod["['w']"] != fp8["['w']"] and fp_mod["['b']"] == fp8["['b']"]
  # Swapping two elements (same multiset of values) changes it too.
  swapped = ref["w"].at[0, 0].set(ref["w"][0, 1]).at[0, 1].set(ref["w"][0, 0])
  assert ckpt_lib.fingerprint(dict(ref, w=swapped))[0]["['w']"] != fp8["['w']"]

  for src, dst_sh in ((s8, sh1), (s1, sh8)):
    d = str(tmp_path / f"ck{len(dst_sh['w'].device_set)}")
    ck = ckpt_lib.Checkpointer(d, async_save=False)
    ck.save(1, src, {"step": 1})
    abstract = ckpt_lib.abstract_like(ref, dst_sh)
    restored, _, step = ck.restore(abstract)   # verified against the saved record
    assert step == 1
    assert restored["w"].sharding == dst_sh["w"]
    assert ckpt_lib.fingerprint(restored)[0] == fp8
    _assert_tree_equal(restored, ref)
    ck.close()


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_truncated_or_deleted_files_fall_back(tmp_path, damage, caplog):
  d = str(tmp_path / "ck")
  ck = ckpt_lib.Checkpointer(d)
  ck.save(1, _state(1), {"step": 1})
  ck.save(2, _state(2), {"step": 2})
  ck.close()
  for path in _files(os.path.join(d, "2")):
    if damage == "delete":
      os.remove(path)
    elif os.path.getsize(path) > 64:
      with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
  ck = ckpt_lib.Checkpointer(d)
  with caplog.at_level(logging.WARNING):
    restored, meta, step = ck.restore(_abstract(_state(0)))
  assert step == 1 and meta["step"] == 1
  _assert_tree_equal(restored, _state(1))
  assert "after skipping steps: step 2" in _warnings(caplog)


def test_checkpoint_without_fingerprints_restores_with_warning(tmp_path, caplog):
  d = str(tmp_path / "ck")
  s1 = _state(1)
  # Written the way the previous version of Checkpointer wrote it: no fingerprints,
  # no good flag, no metrics item.
  m = ocp.CheckpointManager(d, options=ocp.CheckpointManagerOptions(
      max_to_keep=3, enable_async_checkpointing=False, create=True))
  m.save(5, args=ocp.args.Composite(state=ocp.args.StandardSave(s1),
                                    meta=ocp.args.JsonSave({"step": 5})), force=True)
  m.close()
  ck = ckpt_lib.Checkpointer(d)
  assert ck.good_steps() == [5] and ck.latest_good_step() == 5 and ck.best_step() is None
  with caplog.at_level(logging.WARNING):
    restored, meta, step = ck.restore(_abstract(s1))
  assert step == 5 and meta == {"step": 5}
  _assert_tree_equal(restored, s1)
  assert "step 5 has no fingerprints" in _warnings(caplog)
  # A newer save with fingerprints and a rotation including the legacy step.
  ck.save(6, _state(6), {"step": 6}, good=False)
  ck.wait()
  assert ck.all_steps() == [5, 6] and ck.restore(_abstract(s1))[2] == 5
  ck.close()


def test_async_save_survives_donation_and_resume_from_older_step(tmp_path):
  d = str(tmp_path / "ck")
  ck = ckpt_lib.Checkpointer(d, max_to_keep=3)
  overwrite = jax.jit(lambda s: jax.tree_util.tree_map(lambda x: x * 0 + 1, s),
                      donate_argnums=0)
  for s in (1, 2, 3):
    state = _state(s)
    ck.save(s, state, {"step": s}, metric=float(s))
    overwrite(state)          # the train step donates the state right after a save
  ck.close()
  ck = ckpt_lib.Checkpointer(d, max_to_keep=3)
  for s in (3, 1):            # integrity verified: the fingerprints saw the saved values
    restored, _, got = ck.restore(_abstract(_state(0)), step=s)
    assert got == s
    _assert_tree_equal(restored, _state(s))
  # Resumed from step 1 (say, by hand), the run saves step 2 again: the good newer steps
  # 2 and 3 are moved aside, not deleted.
  ck.save(2, _state(20), {"step": 2})
  ck.wait()
  assert ck.all_steps() == [1, 2]
  assert sorted(os.listdir(os.path.join(d, ckpt_lib.SUPERSEDED_DIR))) == ["2", "3"]
  _assert_tree_equal(ck.restore(_abstract(_state(0)))[0], _state(20))
  ck.delete(1)
  assert ck.all_steps() == [2]
  ck.close()
