"""Device mesh and shardings: data parallel by default, FSDP-style parameter sharding.

The mesh has two axes, ``('data', 'fsdp')``, over every device of every process. The
batch is split over both axes. Parameters (and the optimizer/EMA copies, which share
their shapes) are replicated when ``fsdp == 1``; otherwise each array of at least
``min_shard_size`` elements is split along its largest dimension divisible by the
``fsdp`` axis size, and XLA inserts the all-gathers/reduce-scatters.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


def make_mesh(fsdp: int = 1, devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  n = len(devices)
  if fsdp < 1 or n % fsdp:
    raise ValueError(f"mesh.fsdp={fsdp} must divide the {n} devices")
  return Mesh(np.asarray(devices).reshape(n // fsdp, fsdp), BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def check_batch_size(batch_size: int, mesh: Mesh, name: str = "train.batch_size") -> None:
  """Raises a ValueError naming ``name`` unless the batch splits evenly over the mesh.

  The global batch is split over every device of every process, so it must be a
  multiple of the device count (which also makes every host's share equal).
  """
  n = mesh.devices.size
  if batch_size % n:
    raise ValueError(f"config key {name!r} = {batch_size} must be a multiple of the "
                     f"{n} devices of the mesh (each device takes an equal share)")


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def param_spec(shape, fsdp: int, min_shard_size: int = 2 ** 14) -> P:
  if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < min_shard_size:
    return P()
  dims = sorted(range(len(shape)), key=lambda d: -shape[d])
  for d in dims:
    if shape[d] % fsdp == 0:
      spec = [None] * len(shape)
      spec[d] = "fsdp"
      return P(*spec)
  return P()


def state_shardings(abstract_state, mesh: Mesh, min_shard_size: int = 2 ** 14):
  """Shardings for every leaf of a (abstract) train state."""
  fsdp = mesh.shape["fsdp"]
  return jax.tree_util.tree_map(
      lambda x: NamedSharding(mesh, param_spec(x.shape, fsdp, min_shard_size)),
      abstract_state)


def to_global(local_batch: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """Assembles the global batch from each process's local rows (multi-host safe)."""
  return jax.make_array_from_process_local_data(sharding, local_batch)
