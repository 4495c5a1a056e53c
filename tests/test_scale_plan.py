"""The pod plan's counts (experiments.benchmarks.scale_plan) against hand counts."""

import jax
import numpy as np
import pytest

from experiments.benchmarks import scale_plan
from tcsm_jax.training import partition

_HLO = """HloModule jit_step, entry_computation_layout={()->()}

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(f32[] %a, f32[] %b)
}

%body (p: (s32[], f32[64,32])) -> (s32[], f32[64,32]) {
  %p = (s32[], f32[64,32]{1,0}) parameter(0)
  %w = f32[8,32]{1,0} get-tuple-element(%p), index=1
  %all-gather.1 = f32[64,32]{1,0} all-gather(f32[8,32]{1,0} %w), channel_id=1, replica_groups=[1,8]<=[8], dimensions={0}, use_global_device_ids=true
  %reduce-scatter.2 = bf16[8,32]{1,0} reduce-scatter(bf16[64,32]{1,0} %x), channel_id=2, replica_groups={{0,1,2,3,4,5,6,7}}, dimensions={0}, to_apply=%add
  ROOT %t = (s32[], f32[64,32]{1,0}) tuple(%i, %all-gather.1)
}

%cond (p: (s32[], f32[64,32])) -> pred[] {
  ROOT %c = pred[] constant(true)
}

ENTRY %main (x: f32[16,4]) -> f32[16,4] {
  %x = f32[16,4]{1,0} parameter(0)
  %all-reduce.3 = (f32[16,4]{1,0}, f32[]) all-reduce(f32[16,4]{1,0} %x, f32[] %y), channel_id=3, replica_groups=[2,4]<=[8], to_apply=%add
  %while.4 = (s32[], f32[64,32]{1,0}) while((s32[], f32[64,32]{1,0}) %init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}
  ROOT %r = f32[16,4]{1,0} get-tuple-element(%all-reduce.3), index=0
}
"""


def test_collective_bytes_counts_loops_groups_and_tuples():
  c = scale_plan.collective_bytes(_HLO, 8)
  assert c["all-gather"]["count"] == 3
  assert c["all-gather"]["bytes"] == 3 * 64 * 32 * 4               # 3 trips, full buffer
  assert c["reduce-scatter"]["bytes"] == 3 * 64 * 32 * 2           # operand (bf16)
  assert c["all-reduce"]["bytes"] == 16 * 4 * 4 + 4                # tuple of two
  assert c["all-reduce"]["ring_bytes"] == pytest.approx(2 * (16 * 4 * 4 + 4) * 3 / 4)
  assert c["all-gather"]["ring_bytes"] == pytest.approx(3 * 64 * 32 * 4 * 7 / 8)
  assert c["unknown_trip_counts"] == 0


def test_local_bytes_of_fsdp_shards_by_hand():
  mesh = partition.make_mesh(8, devices=jax.devices()[:8])
  tree = {"big": jax.ShapeDtypeStruct((1024, 24), np.float32),     # 96 KiB: sharded
          "odd": jax.ShapeDtypeStruct((1023, 25), np.float32),     # no dim % 8: whole
          "small": jax.ShapeDtypeStruct((8, 8), np.float32)}       # < min_bytes: whole
  sh = partition.state_shardings(tree, mesh, min_bytes=4096)
  got = scale_plan.local_bytes(tree, sh)
  assert got == 1024 * 24 * 4 // 8 + 1023 * 25 * 4 + 8 * 8 * 4


def _tiny(remat="none"):
  cfg = scale_plan.plan_config("tiny", 32, remat, False, "float32")
  cfg.model.num_layers = 1
  cfg.model.width = 64
  cfg.model.num_heads = 2
  return cfg


def test_compiled_step_memory_and_collectives_match_hand_counts():
  """Tiny model, 8 fake devices, every array sharded (``min_bytes=0``): the state's
  bytes per device are XLA's argument bytes; data parallel all-reduces every gradient
  (one combined all-reduce) plus the loss; FSDP keeps 1/8 of every array per device and
  gathers every parameter at least once. (XLA:CPU's pipeline forms no reduce-scatter:
  its FSDP gradient reduction shows as all-reduce / all-to-all; see scale_plan.md.)"""
  devices = jax.devices()[:8]
  vocab, b = 64, 2
  small = 4 + 8 + 4                                         # step, rng, skipped
  data = scale_plan.compile_step(_tiny(), vocab, partition.make_mesh(1, devices), b,
                                 min_bytes=0)
  param_bytes = data["num_params"] * 4
  assert data["params"] == data["ema"] == param_bytes
  assert data["opt"] == 2 * param_bytes + 8                 # mu, nu; two int32 counts
  assert data["batch"] == b * 32 * 4
  assert data["argument"] == (data["params"] + data["opt"] + data["ema"] + data["batch"]
                              + small)
  c = data["collectives"]
  assert c["all-gather"]["bytes"] == c["reduce-scatter"]["bytes"] == 0
  assert c["all-reduce"]["bytes"] == param_bytes + 4        # gradients + the loss
  assert c["all-reduce"]["ring_bytes"] == pytest.approx(2 * (param_bytes + 4) * 7 / 8)

  fsdp = scale_plan.compile_step(_tiny(), vocab, partition.make_mesh(8, devices), b,
                                 min_bytes=0)
  assert fsdp["params"] == fsdp["ema"] == param_bytes // 8
  assert fsdp["opt"] == 2 * param_bytes // 8 + 8
  assert fsdp["argument"] == (fsdp["params"] + fsdp["opt"] + fsdp["ema"] + fsdp["batch"]
                              + small)
  assert param_bytes <= fsdp["collectives"]["all-gather"]["bytes"] <= 3 * param_bytes
