"""Device mesh and shardings: data parallel by default, FSDP-style parameter sharding.

The mesh has two axes, ``('data', 'fsdp')``, over every device of every process, built
by ``jax.make_mesh`` so that the device order follows the hardware (ICI rings on TPU,
NVLink islands on GPU). The batch is split over both axes. Parameters (and the
optimizer/EMA copies, which share their shapes) are replicated when ``fsdp == 1``;
otherwise each array of at least ``min_bytes`` (default 4 MiB, big_vision's rule:
smaller arrays cost more in collectives than they save) is split along its largest
dimension divisible by the ``fsdp`` axis size, and XLA inserts the
all-gathers/reduce-scatters. Shardings depend only on the current mesh, never on the
one a checkpoint was written with: restoring with them reshards any checkpoint.

Multi-slice (TPU slices joined by the data-centre network, DCN): when the devices span
several slices (``device.slice_index``), the mesh is built by
``mesh_utils.create_hybrid_device_mesh``: the ``data`` axis runs across slices (only the
gradient all-reduce of data parallelism crosses DCN), ``fsdp`` stays inside one slice
(its all-gathers and reduce-scatters ride the ICI), so ``mesh.fsdp`` must divide the
chips of one slice.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from tcsm_jax import errors

BATCH_AXES = ("data", "fsdp")


DEFAULT_MIN_BYTES = 4 * 2 ** 20


def num_slices(devices) -> int:
  """How many TPU slices ``devices`` span (1 for CPU/GPU and single slices)."""
  return len({getattr(d, "slice_index", 0) for d in devices})


def make_mesh(fsdp: int = 1, devices=None) -> Mesh:
  """``('data', 'fsdp')`` mesh over ``devices`` (default: every device of every host).

  Over several slices the ``data`` axis is slices x (per-slice data groups), slice-major
  (``create_hybrid_device_mesh``), and ``fsdp`` groups never cross a slice.

  Raises:
    errors.ConfigError: ``fsdp`` does not divide the device count (over several slices:
      the device count of one slice).
  """
  devices = jax.devices() if devices is None else list(devices)
  n = len(devices)
  if fsdp < 1 or n % fsdp:
    raise errors.ConfigError(f"config key 'mesh.fsdp' = {fsdp} must divide the {n} "
                             "devices")
  auto = (jax.sharding.AxisType.Auto,) * 2
  slices = num_slices(devices)
  if slices > 1:
    per = n // slices
    if n % slices or per % fsdp:
      raise errors.ConfigError(f"config key 'mesh.fsdp' = {fsdp} must divide the {per} "
                               f"devices of one slice ({slices} slices: FSDP stays "
                               "inside a slice, data parallel across them)")
    from jax.experimental import mesh_utils  # pylint: disable=g-import-not-at-top
    grid = mesh_utils.create_hybrid_device_mesh(
        (per // fsdp, fsdp), (slices, 1), devices=devices, allow_split_physical_axes=True)
    return Mesh(grid, BATCH_AXES, auto)
  try:
    return jax.make_mesh((n // fsdp, fsdp), BATCH_AXES, auto, devices=devices)
  except (ValueError, NotImplementedError):
    # Device sets make_mesh cannot lay out (e.g. a subset of a TPU slice): plain order.
    return Mesh(np.asarray(devices).reshape(n // fsdp, fsdp), BATCH_AXES, auto)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def check_batch_size(batch_size: int, mesh: Mesh, name: str = "train.batch_size") -> None:
  """Raises a ValueError naming ``name`` unless the batch splits evenly over the mesh.

  The global batch is split over every device of every process, so it must be a
  multiple of the device count (which also makes every host's share equal).
  """
  n = mesh.devices.size
  if batch_size % n:
    raise errors.ConfigError(f"config key {name!r} = {batch_size} must be a multiple of "
                             f"the {n} devices of the mesh (each device takes an equal "
                             "share)")


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def param_spec(shape, fsdp: int, min_bytes: int = DEFAULT_MIN_BYTES,
               itemsize: int = 4) -> P:
  """FSDP spec of one array: split its largest ``fsdp``-divisible dimension."""
  if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) * itemsize < min_bytes:
    return P()
  dims = sorted(range(len(shape)), key=lambda d: -shape[d])
  for d in dims:
    if shape[d] % fsdp == 0:
      spec = [None] * len(shape)
      spec[d] = "fsdp"
      return P(*spec)
  return P()


def state_shardings(abstract_state, mesh: Mesh, min_bytes: int = DEFAULT_MIN_BYTES):
  """Shardings on ``mesh`` for every leaf of an (abstract) train state or params."""
  fsdp = mesh.shape["fsdp"]
  return jax.tree.map(
      lambda x: NamedSharding(mesh, param_spec(x.shape, fsdp, min_bytes,
                                               np.dtype(x.dtype).itemsize)),
      abstract_state)


def to_global(local_batch: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """Assembles the global batch from each process's local rows (multi-host safe)."""
  return jax.make_array_from_process_local_data(sharding, local_batch)
