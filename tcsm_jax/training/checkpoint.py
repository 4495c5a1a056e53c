"""Orbax checkpoints of the train state plus a JSON record of the run.

Orbax writes each step into a temporary directory and renames it when every host has
finished (an atomic commit), so a crash mid-save never leaves a half-written step that
looks valid. Saving is asynchronous: training continues while the arrays are written.

On top of orbax this module adds two safety nets.

**Integrity.** At save, every array leaf is fingerprinted *on device* by one jitted
function (:func:`fingerprint`): each element's bits, mixed with its row-major index by
MurmurHash3's finalizer, summed in ``uint32``. Integer addition mod 2**32 is associative
and commutative, so the fingerprint is bit-identical for any sharding, device or process
count and reduction order: a state saved on 8 devices verifies when restored on 1, and
vice versa. Whether each floating leaf is all finite is recorded too. ``save`` only
dispatches that computation; the few scalars are copied to the host and written into the
step's JSON meta (``meta["_integrity"]``) by orbax's background commit thread, before the
step commits. On restore the fingerprints are recomputed on the restored arrays; a
mismatch (bit rot, a corrupted chunk, a garbled file of the right size) or non-finite
values mark the step corrupt: a warning names the step and the first mismatching leaf,
and the next older step is tried, as for a step that fails to load at all. If none
loads, ``CheckpointError`` names the directory. A step written before fingerprints
existed restores with a warning (its values are still checked for finiteness).

**Never rotate out the last good state.** ``save(..., good=, metric=)`` records the
caller's verdict on the state and, optionally, a metric (lower is better: the eval NLL
bound). A step is *good* when the caller said so, its metric (if any) is finite and,
with ``max_metric_ratio``, not worse than that factor times the best good metric on
disk, and all its floating values are finite (known once its save has finished).
Rotation is a custom orbax ``PreservationPolicy``: it keeps the newest ``max_to_keep``
steps, **and** the newest good step, **and** the good step with the lowest metric; orbax
deletes only after the new step has committed. A step whose save is still in flight is
not yet counted as good, so the previous good step survives until it is confirmed. The
verdict and metric are stored in the step's JSON meta (``meta["_checkpoint"]``), read
back lazily after a restart; a step whose meta cannot be read is not good. (Orbax's own
``metrics`` item is not used: with ``best_fn`` set orbax reads every step's metrics file
when it starts, and one garbled file would make the whole directory unusable.)
``restore()`` prefers the newest good step that passes the integrity check.

When a run resumes from an older step (the newer ones were bad or corrupt) and saves
again, the newer steps belong to an abandoned timeline: before the first save at or below
them, those that are not good (or that failed to restore in this process) are deleted,
and good ones are moved, not deleted, to ``<directory>/superseded/``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax import lax

from tcsm_jax import errors
from tcsm_jax import fs

INTEGRITY_KEY = "_integrity"     # meta key: fingerprints and finiteness of the state
STATUS_KEY = "_checkpoint"       # meta key: the good verdict and metric
_RESERVED = (INTEGRITY_KEY, STATUS_KEY)
FINGERPRINT_ALGO = "murmur3-fmix32(bits ^ index*0x9e3779b9)-sum-u32"
SUPERSEDED_DIR = "superseded"
TMP_SUFFIX = ".orbax-checkpoint-tmp"   # orbax's name of a save not yet committed


class CheckpointError(errors.UserError, ValueError):
  """No usable checkpoint (corrupt, incompatible or missing)."""


# ---------------------------------------------------------------------------------
# Fingerprints.
# ---------------------------------------------------------------------------------

_GOLDEN = np.uint32(0x9E3779B9)
_SALT = np.uint32(0x7F4A7C15)


def _fmix32(h):
  """MurmurHash3's 32-bit finalizer (a bijection on uint32 with full avalanche)."""
  h = h ^ (h >> 16)
  h = h * np.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * np.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def _as_words(x):
  """The bits of ``x`` as uint32 words: the shape of ``x`` (plus a trailing 2 for 8-byte
  dtypes). bool, 8-bit and 16-bit (bfloat16, float16, int16) values are zero-extended;
  typed PRNG keys contribute their key data."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if jnp.issubdtype(x.dtype, jnp.complexfloating):
    x = jnp.stack([jnp.real(x), jnp.imag(x)], axis=-1)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  size = jnp.dtype(x.dtype).itemsize
  if size == 4:
    return lax.bitcast_convert_type(x, jnp.uint32)
  if size == 2:
    return lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
  if size == 1:
    return lax.bitcast_convert_type(x, jnp.uint8).astype(jnp.uint32)
  if size == 8:
    return lax.bitcast_convert_type(x, jnp.uint32)      # [..., 2]
  raise TypeError(f"cannot fingerprint dtype {x.dtype}")


def _leaf_fingerprint(x):
  """``sum_i fmix32(bits_i ^ (i * golden + salt)) mod 2**32`` over the row-major element
  index ``i``. The index comes from per-axis iotas (no reshape), so a sharded leaf stays
  sharded: a local reduction per shard plus one all-reduce of a scalar."""
  w = _as_words(x)
  idx = jnp.zeros(w.shape, jnp.uint32)
  stride = 1
  for ax in range(w.ndim - 1, -1, -1):
    idx = idx + lax.broadcasted_iota(jnp.uint32, w.shape, ax) * np.uint32(stride % 2**32)
    stride *= w.shape[ax]
  return jnp.sum(_fmix32(w ^ (idx * _GOLDEN + _SALT)), dtype=jnp.uint32)


def _leaf_finite(x):
  if jnp.issubdtype(x.dtype, jnp.inexact):
    return jnp.all(jnp.isfinite(x))
  return jnp.array(True)


def _fingerprint_leaves(leaves):
  return (jnp.stack([_leaf_fingerprint(x) for x in leaves]),
          jnp.stack([_leaf_finite(x) for x in leaves]))


_JITS: Dict[Any, Any] = {}


def _jitted(out_sharding):
  if out_sharding not in _JITS:
    kw = {} if out_sharding is None else {"out_shardings": (out_sharding, out_sharding)}
    _JITS[out_sharding] = jax.jit(_fingerprint_leaves, **kw)
  return _JITS[out_sharding]


def _device_group(x):
  if isinstance(x, jax.Array) and x.committed:
    return tuple(sorted(d.id for d in x.sharding.device_set))
  return None


def _replicated_out(x):
  """A replicated output sharding for arrays spanning several processes (a
  single-process result is read directly)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    sh = x.sharding
    if isinstance(sh, jax.sharding.NamedSharding):
      return jax.sharding.NamedSharding(sh.mesh, jax.sharding.PartitionSpec())
    raise CheckpointError(f"cannot fingerprint a multi-process array with a "
                          f"{type(sh).__name__}; use a NamedSharding")
  return None


def _to_host(a) -> np.ndarray:
  if isinstance(a, jax.Array) and not a.is_fully_addressable:
    return np.asarray(a.addressable_data(0))
  return np.asarray(a)


class PendingFingerprint:
  """Fingerprints dispatched on device; ``result()`` copies the few scalars to the host
  (blocking only until the device computation is done). Thread safe, computed once.

  ``PendingFingerprint()`` without a tree waits for a later ``dispatch(tree)``:
  ``result()`` in another thread blocks until then."""

  def __init__(self, tree=None):
    self._lock = threading.Lock()
    self._dispatched = threading.Event()
    self._error: Optional[BaseException] = None
    self._out: List[Any] = []
    self.paths: List[str] = []
    self._result: Optional[Tuple[Dict[str, str], Dict[str, bool]]] = None
    if tree is not None:
      self.dispatch(tree)

  def dispatch(self, tree) -> None:
    try:
      flat, _ = jax.tree_util.tree_flatten_with_path(tree)
      self.paths = [jax.tree_util.keystr(p) for p, _ in flat]
      arrays = [x if isinstance(x, jax.Array) else jnp.asarray(x) for _, x in flat]
      groups: Dict[Any, List[int]] = {}
      for i, x in enumerate(arrays):
        groups.setdefault(_device_group(x), []).append(i)
      for idx in groups.values():     # one jitted call per set of devices
        f, ok = _jitted(_replicated_out(arrays[idx[0]]))([arrays[i] for i in idx])
        for a in (f, ok):
          if a.is_fully_addressable:
            a.copy_to_host_async()
        self._out.append((idx, f, ok))
    except BaseException as e:
      self._error = e
      raise
    finally:
      self._dispatched.set()

  @property
  def dispatched(self) -> bool:
    return self._dispatched.is_set()

  def done(self) -> bool:
    return self._result is not None

  def result(self) -> Tuple[Dict[str, str], Dict[str, bool]]:
    self._dispatched.wait()
    if self._error is not None:
      raise CheckpointError(f"fingerprinting the state failed: {self._error!r}")
    with self._lock:
      if self._result is None:
        fps: List[str] = [""] * len(self.paths)
        fin: List[bool] = [True] * len(self.paths)
        for idx, f, ok in self._out:
          f, ok = _to_host(f), _to_host(ok)
          for j, i in enumerate(idx):
            fps[i], fin[i] = f"{int(f[j]):08x}", bool(ok[j])
        self._result = dict(zip(self.paths, fps)), dict(zip(self.paths, fin))
        self._out = []
      return self._result


def fingerprint(tree) -> Tuple[Dict[str, str], Dict[str, bool]]:
  """Layout-independent fingerprints of every array leaf of ``tree``.

  Computed on device by one jitted function (per set of devices; results replicated),
  then a device->host copy of two scalars per leaf. The value does not depend on the
  sharding, the number of devices or processes, or the reduction order.

  Returns:
    ``({leaf_path: "8 hex digits"}, {leaf_path: all_finite})``; non-floating leaves
    are always finite.
  """
  return PendingFingerprint(tree).result()


def _non_finite(finite: Dict[str, bool]) -> List[str]:
  return [p for p, ok in finite.items() if not ok]


def _compare(saved: Dict[str, Any], fps: Dict[str, str], finite: Dict[str, bool]
             ) -> Optional[str]:
  """None if the restored state matches the saved record, else why not."""
  leaves = saved.get("leaves", {})
  if set(leaves) == set(fps):
    pairs = [(p, leaves[p], fps[p]) for p in fps]
  elif len(leaves) == len(fps):   # same structure, other container names: by position
    pairs = [(p, s, fps[p]) for (p, s) in zip(fps, leaves.values())]
  else:
    return (f"saved fingerprints cover {len(leaves)} leaves, the restored state has "
            f"{len(fps)}")
  wrong = [(p, s, g) for p, s, g in pairs if s != g]
  if wrong:
    p, s, g = wrong[0]
    return (f"fingerprint mismatch in {len(wrong)} of {len(pairs)} leaves, first "
            f"{p} (saved {s}, restored {g})")
  bad = _non_finite(finite)
  if bad:
    return f"non-finite values in {len(bad)} leaves, first {bad[0]}"
  return None


# ---------------------------------------------------------------------------------
# The JSON meta, completed in orbax's commit thread.
# ---------------------------------------------------------------------------------

class _DeferredMeta:
  """The meta of a step whose integrity record is still being computed on device."""

  def __init__(self, meta: Dict[str, Any], pending: PendingFingerprint,
               on_done: Callable[[List[str]], None]):
    self.meta, self.pending, self.on_done = meta, pending, on_done

  def resolve(self) -> Dict[str, Any]:
    fps, finite = self.pending.result()
    bad = _non_finite(finite)
    meta = dict(self.meta)
    meta[INTEGRITY_KEY] = {"algo": FINGERPRINT_ALGO, "leaves": fps, "non_finite": bad}
    if bad:
      status = dict(meta[STATUS_KEY])
      why = f"non-finite values in {len(bad)} leaves, first {bad[0]}"
      status["good"] = False
      status["not_good_because"] = "; ".join(
          r for r in (status.get("not_good_because"), why) if r)
      meta[STATUS_KEY] = status
    self.on_done(bad)
    return meta


class _MetaHandler(ocp.JsonCheckpointHandler):
  """orbax's JSON handler, resolving a ``_DeferredMeta`` in the background commit thread
  (the file and the handler name on disk are the stock JSON handler's)."""

  @classmethod
  def typestr(cls) -> str:
    return ocp.JsonCheckpointHandler.typestr()

  async def _save_fn(self, x, directory):
    if isinstance(x, _DeferredMeta):
      x = x.resolve()
    await super()._save_fn(x, directory)


def _handler_registry():
  reg = ocp.handlers.DefaultCheckpointHandlerRegistry()
  meta, state = _MetaHandler(), ocp.StandardCheckpointHandler()
  reg.add("meta", ocp.args.JsonSave, meta)
  reg.add("meta", ocp.args.JsonRestore, meta)
  reg.add("state", ocp.args.StandardSave, state)
  reg.add("state", ocp.args.StandardRestore, state)
  return reg


# ---------------------------------------------------------------------------------
# Rotation.
# ---------------------------------------------------------------------------------

def _said_good(m: Optional[Dict[str, Any]]) -> bool:
  """The saved verdict; steps written before verdicts existed count as good."""
  return True if m is None else bool(m.get("good", True))


def _metric(m: Optional[Dict[str, Any]]) -> Optional[float]:
  v = None if m is None else m.get("metric")
  return float(v) if v is not None and math.isfinite(float(v)) else None


def _best(items) -> Optional[int]:
  """Step of the lowest metric among ``(step, metrics)`` items (newest on ties)."""
  scored = [(v, -s, s) for s, m in items if (v := _metric(m)) is not None]
  return min(scored)[2] if scored else None


class KeepGoodPolicy:
  """Orbax ``PreservationPolicy``: the newest ``n`` steps (all if None), the newest good
  step and the good step with the lowest metric. ``verdict(step)`` returns
  ``(good, record)`` with the metric in ``record["metric"]``."""

  def __init__(self, n: Optional[int],
               verdict: Callable[[int], Tuple[bool, Optional[Dict[str, Any]]]]):
    self.n, self.verdict = n, verdict

  def should_preserve(self, checkpoints: Sequence[Any], *, context=None) -> List[bool]:
    steps = sorted(c.step for c in checkpoints)
    keep = set(steps if self.n is None else steps[max(0, len(steps) - self.n):]
               if self.n > 0 else [])
    good = [(s, rec) for s in steps for ok, rec in [self.verdict(s)] if ok]
    if good:
      keep.add(good[-1][0])
      best = _best(good)
      if best is not None:
        keep.add(best)
    return [c.step in keep for c in checkpoints]


# ---------------------------------------------------------------------------------
# The checkpointer.
# ---------------------------------------------------------------------------------

class Checkpointer:
  """``ocp.CheckpointManager`` for ``(state, meta)`` pairs with integrity checks and
  rotation that never deletes the last good state (see the module docstring).

  Args:
    directory: the checkpoint directory (local or bucket URL; created if missing).
    max_to_keep: newest steps kept by rotation (None: all); the newest good step and
      the best-metric good step are kept in addition.
    async_save: write arrays in a background thread.
    max_metric_ratio: if set, a save whose ``metric`` exceeds this factor times the
      best good metric on disk is recorded as not good.
    clean_tmp: remove the temporary directories of saves that never committed
      (``N.orbax-checkpoint-tmp*``: a killed run, a full disk). Only for the one
      writer of the directory (the trainer, holding the workdir lock), never for a
      reader that may run beside it.
  """

  def __init__(self, directory, max_to_keep: Optional[int] = 3,
               async_save: bool = True, max_metric_ratio: Optional[float] = None,
               clean_tmp: bool = False):
    d = os.fspath(directory)
    self.directory = d if fs.is_remote(d) else os.path.abspath(d)
    fs.check_inside(self.directory)     # orbax writes here, not through fs
    self.max_to_keep = max_to_keep
    self.async_save = async_save
    self.max_metric_ratio = max_metric_ratio
    if clean_tmp and jax.process_index() == 0:
      leftovers = self._remove_tmp(None)
      if leftovers:
        logging.warning("removed %d unfinished save(s) in %s: %s", len(leftovers),
                        self.directory, ", ".join(leftovers))
    opts = ocp.CheckpointManagerOptions(
        preservation_policy=KeepGoodPolicy(max_to_keep, self._confirmed_verdict),
        enable_async_checkpointing=async_save, create=True)
    self._mngr = ocp.CheckpointManager(self.directory, options=opts,
                                       handler_registry=_handler_registry())
    # Per step, read once from its meta JSON (or known from this process's save):
    self._status: Dict[int, Optional[Dict[str, Any]]] = {}   # verdict, None: legacy
    self._non_finite: Dict[int, List[str]] = {}               # from integrity record
    self._pending: Dict[int, PendingFingerprint] = {}          # saves in flight
    self._failed: Dict[int, str] = {}   # steps that failed to restore in this process
    self._saving: Optional[int] = None   # the step of the last save, until it failed
    self._refused = False                # a save was refused by the disk (reported)
    # {leaf path: fingerprint} of the last state ``restore`` returned (verified)
    self.restored_fingerprints: Dict[str, str] = {}

  # -- queries ----------------------------------------------------------------------

  def tmp_dirs(self, step: Optional[int] = None) -> List[str]:
    """Names of the temporary directories of saves that did not commit (of ``step``)."""
    if not fs.isdir(self.directory):
      return []
    prefix = "" if step is None else f"{int(step)}."
    return [n for n in fs.listdir(self.directory)
            if TMP_SUFFIX in n and n.startswith(prefix)]

  def all_steps(self) -> List[int]:
    return sorted(self._mngr.all_steps())

  def latest_step(self) -> Optional[int]:
    return self._mngr.latest_step()

  def status(self, step: int) -> Optional[Dict[str, Any]]:
    """The saved verdict ``{"good": bool, "metric": float | None, ...}`` of a step
    (``meta["_checkpoint"]``), None for a step written before verdicts existed."""
    if step not in self._status:
      self._read_record(step)
    return self._status[step]

  def _read_record(self, step: int) -> None:
    """Verdict and non-finite leaves from the step's meta JSON. An unreadable meta
    makes the step not good (its restore would fail too)."""
    try:
      meta = json.loads(epath.Path(self.directory, str(step), "meta", "metadata")
                        .read_text())
      status = meta.get(STATUS_KEY)
      bad = list((meta.get(INTEGRITY_KEY) or {}).get("non_finite", []))
    except Exception as e:  # pylint: disable=broad-except
      status = {"good": False, "metric": None,
                "not_good_because": f"meta unreadable: {type(e).__name__}"}
      bad = []
      if step not in self._status:
        logging.warning("checkpoint step %d in %s has missing or corrupt metadata "
                        "(%s: %s): it is not good, older good steps are restored first",
                        step, self.directory, type(e).__name__, str(e)[:200])
    self._status.setdefault(step, dict(status) if status is not None else None)
    self._non_finite.setdefault(step, bad)

  def meta(self, step: int) -> Dict[str, Any]:
    """The caller's meta saved with ``step`` (no arrays read); {} if unreadable."""
    try:
      meta = json.loads(epath.Path(self.directory, str(step), "meta", "metadata")
                        .read_text())
    except Exception:  # pylint: disable=broad-except
      return {}
    if not isinstance(meta, dict):
      return {}
    return {k: v for k, v in meta.items() if k not in _RESERVED}

  def is_good(self, step: int) -> bool:
    """Good verdict and all values finite (waits for an in-flight fingerprint)."""
    return _said_good(self.status(step)) and not self._nonfinite_of(step, block=True)

  def good_steps(self) -> List[int]:
    return [s for s in self.all_steps() if self.is_good(s)]

  def latest_good_step(self) -> Optional[int]:
    good = self.good_steps()
    return good[-1] if good else None

  def best_step(self) -> Optional[int]:
    """The good step with the lowest metric (None if no good step has a metric)."""
    return _best([(s, self.status(s)) for s in self.good_steps()])

  def _nonfinite_of(self, step: int, block: bool) -> Optional[List[str]]:
    """Leaves of ``step`` with non-finite values; None while unknown (not blocking)."""
    if step in self._non_finite:
      return self._non_finite[step]
    if step in self._pending:
      p = self._pending[step]
      if not block and not p.done():
        return None
      return _non_finite(p.result()[1])
    self._read_record(step)
    return self._non_finite[step]

  def _confirmed_verdict(self, step: int) -> Tuple[bool, Optional[Dict[str, Any]]]:
    """For rotation: a step in flight is not good yet (its finiteness is unknown).
    Deterministic across processes: earlier saves have all finished by then."""
    if step in self._pending:
      return False, None
    status = self.status(step)
    return _said_good(status) and not self._nonfinite_of(step, block=False), status

  def _collect(self) -> None:
    """Records the results of finished saves (call after waiting for them)."""
    for s, p in list(self._pending.items()):
      self._non_finite[s] = _non_finite(p.result()[1])
      del self._pending[s]

  # -- save -------------------------------------------------------------------------

  def save(self, step: int, state, meta: Dict[str, Any], force: bool = True,
           good: bool = True, metric: Optional[float] = None) -> None:
    """Saves ``state`` and the JSON-serializable ``meta`` at ``step``.

    Blocks only for orbax's device->host copy (and for the previous save to finish):
    the fingerprints are dispatched on device (one jitted call, async) and copied to the
    host (a few scalars) and written by orbax's commit thread.

    Args:
      good: the caller's verdict on the state (e.g. finite loss, no run of skipped
        steps, eval not much worse than the best). The step is not good either if its
        values are not all finite, ``metric`` is not finite, or ``metric`` exceeds
        ``max_metric_ratio`` times the best good metric.
      metric: optional score, lower is better (eval NLL bound); the good step with the
        lowest one is never rotated out.
    """
    step = int(step)
    self._finish()                           # orbax.save waits for this anyway
    self._collect()
    reasons = [] if good else ["caller"]
    if metric is not None:
      metric = float(metric)
      if not math.isfinite(metric):
        reasons.append(f"metric {metric}")
      elif self.max_metric_ratio is not None:
        best = self.best_step()
        ref = _metric(self.status(best)) if best is not None else None
        if ref is not None and ref > 0 and metric > self.max_metric_ratio * ref:
          reasons.append(f"metric {metric:.6g} > {self.max_metric_ratio:g} x best "
                         f"{ref:.6g} (step {best})")
    if good and reasons:
      logging.warning("checkpoint step %d in %s is saved but not marked good: %s", step,
                      self.directory, "; ".join(reasons))
    status = {"good": not reasons,
              "metric": metric if metric is not None and math.isfinite(metric) else None}
    if reasons:
      status["not_good_because"] = "; ".join(reasons)
    self._drop_abandoned(step)
    meta = {k: v for k, v in dict(meta).items() if k not in _RESERVED}
    meta[STATUS_KEY] = status

    def on_done(bad: List[str]) -> None:
      if bad:
        logging.warning("checkpoint step %d in %s has non-finite values in %d leaves "
                        "(first %s): it is not good and will not be restored", step,
                        self.directory, len(bad), bad[0])

    # Asynchronous saves dispatch the fingerprint after orbax's device->host copy (on
    # CPU a computation queued first delays that copy); the commit thread waits for it.
    # Synchronous saves write the meta inline, so they dispatch first.
    pending = PendingFingerprint(None if self.async_save else state)
    self._status[step] = status
    self._pending[step] = pending
    saved = None
    self._saving = step
    try:
      with self._refusals():
        saved = self._mngr.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            meta=ocp.args.JsonSave(_DeferredMeta(meta, pending, on_done))), force=force)
    finally:
      if not pending.dispatched:
        pending.dispatch(state)     # before the caller may donate the state's buffers
    if saved is False:
      self._status.pop(step, None)
      self._pending.pop(step, None)

  def _finish(self) -> None:
    """Waits for the save in flight (a disk refusal raised as ``DiskError``)."""
    with self._refusals():
      self._mngr.wait_until_finished()

  @contextlib.contextmanager
  def _refusals(self):
    """A save the disk refused (read-only, full: orbax's ``RESOURCE_EXHAUSTED``, no
    permission) becomes one ``errors.DiskError`` naming the directory, after removing
    what the failed save left (``N.orbax-checkpoint-tmp``), so that the disk is not
    full again at the next start. Reported once."""
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except
      why = fs.refusal(e, self.directory)
      if why is not None and self._refused:
        logging.debug("again: %s", why)       # already reported
        return
      if why is None or self._saving is None:
        raise
      step, self._saving, self._refused = self._saving, None, True
      removed = self._remove_tmp(step)
      raise errors.DiskError(
          f"cannot save checkpoint step {step}: {why}"
          f"{'; removed the partial save ' + ', '.join(removed) if removed else ''}"
          "; the checkpoints saved before are intact") from e

  def _remove_tmp(self, step: Optional[int]) -> List[str]:
    if jax.process_index() != 0:
      return []
    removed = []
    for name in self.tmp_dirs(step):
      try:
        fs.remove(fs.join(self.directory, name))
        removed.append(name)
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("could not remove %s in %s: %s", name, self.directory, e)
    return removed

  def delete(self, step: int) -> None:
    """Deletes one step (e.g. newer steps a resumed run abandons)."""
    self._finish()
    self._collect()
    self._mngr.delete(step)
    for d in (self._status, self._non_finite, self._failed):
      d.pop(step, None)

  def _drop_abandoned(self, step: int) -> None:
    """Steps >= ``step`` on disk are from a timeline the run abandoned by resuming from
    an older step: delete the bad or corrupt ones, move good ones to ``superseded/``."""
    newer = [s for s in self.all_steps() if s >= step]
    moved = False
    for s in newer:
      if s in self._failed or not self.is_good(s):
        logging.warning("deleting step %d of %s (%s): the run resumed from an older "
                        "step and is saving step %d", s, self.directory,
                        self._failed.get(s, "not good"), step)
        self.delete(s)
        continue
      moved = True
      if jax.process_index() == 0:
        dst = epath.Path(self.directory, SUPERSEDED_DIR, str(s))
        if dst.exists():
          dst = epath.Path(f"{dst}.{int(time.time())}")
        dst.parent.mkdir(parents=True, exist_ok=True)
        epath.Path(self.directory, str(s)).rename(dst)
        logging.warning("moved good step %d of %s to %s: the run resumed from an older "
                        "step and is saving step %d", s, self.directory, dst, step)
      for d in (self._status, self._non_finite, self._failed):
        d.pop(s, None)
    if moved:
      if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
        multihost_utils.sync_global_devices(f"checkpoint_superseded_{step}")
      self._mngr.reload()

  # -- restore ----------------------------------------------------------------------

  def restore(self, abstract_state, step: Optional[int] = None, prefer_good: bool = True
              ) -> Tuple[Any, Dict, int]:
    """Restores into ``abstract_state``'s layout, verifying integrity.

    Without ``step``: the good steps newest first, then the others newest first (with
    ``prefer_good=False``: all steps newest first). A step that fails to load, does not
    match its fingerprints or holds non-finite values is reported and skipped.

    Args:
      abstract_state: pytree of ``jax.ShapeDtypeStruct`` with shardings.
      step: a specific step (no fallback).
      prefer_good: try the steps marked good first.
    Returns:
      ``(state, meta, step)``; ``meta`` as saved, without this module's keys.
    Raises:
      CheckpointError: when no step can be restored.
    """
    self.wait()
    if step is not None:
      steps = [int(step)]
    else:
      steps = self.all_steps()[::-1]
      if prefer_good:
        good = set(self.good_steps())
        steps = [s for s in steps if s in good] + [s for s in steps if s not in good]
    if not steps:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    errs = []
    for s in steps:
      try:
        out = self._mngr.restore(s, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        state, meta = out.state, dict(out.meta or {})
      except Exception as e:  # pylint: disable=broad-except
        msg = f"step {s}: {type(e).__name__}: {_one_line(str(e))}"
        logging.error("checkpoint %s step %d is unreadable: corrupt or incompatible "
                      "(%s)%s", self.directory, s, msg,
                      "; trying an older step" if step is None else "")
        errs.append(msg)
        self._failed[s] = "unreadable"
        continue
      fps, finite = fingerprint(state)
      record = meta.get(INTEGRITY_KEY)
      if record is None:
        bad = _non_finite(finite)
        why = f"non-finite values in {len(bad)} leaves, first {bad[0]}" if bad else None
        if why is None:
          logging.warning("checkpoint %s step %d has no fingerprints (written by an "
                          "older version): restored without an integrity check",
                          self.directory, s)
      else:
        why = _compare(record, fps, finite)
      if why is not None:
        errs.append(f"step {s}: corrupt: {why}")
        logging.warning("checkpoint %s step %d is corrupt (%s)%s", self.directory, s, why,
                        "; trying an older step" if step is None else "")
        self._failed[s] = "corrupt"
        continue
      if errs:
        logging.warning("restored step %d of %s after skipping steps: %s", s,
                        self.directory, "; ".join(errs))
      if not self.is_good(s):
        logging.warning("restored step %d of %s, which is not marked good (%s)", s,
                        self.directory, (self.status(s) or {}).get("not_good_because"))
      self.restored_fingerprints = fps
      return state, {k: v for k, v in meta.items() if k not in _RESERVED}, s
    raise CheckpointError(
        f"no checkpoint in {self.directory} could be restored (corrupt or incompatible "
        f"with this config): " + " | ".join(errs))

  def wait(self) -> None:
    self._finish()
    self._collect()

  def close(self) -> None:
    self.wait()
    self._mngr.close()


def _one_line(text: str, limit: int = 300) -> str:
  """An exception's message as one log line: the text before TensorStore's spec dump
  ("See full TensorStore details"), whitespace collapsed, at most ``limit`` chars."""
  text = text.split("See full TensorStore details")[0]
  text = " ".join(text.split())
  return text if len(text) <= limit else text[:limit - 3] + "..."


def abstract_like(state, shardings):
  """``ShapeDtypeStruct`` tree with the given shardings (restore target)."""
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
