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


_HLO_ASYNC = """HloModule jit_step, entry_computation_layout={()->()}

%start_fusion (p0: bf16[8,32]) -> (bf16[8,32], bf16[64,32]) {
  %p0 = bf16[8,32]{1,0} parameter(0)
  %all-gather.1 = bf16[64,32]{1,0} all-gather(%p0), channel_id=7, replica_groups=[1,8]<=[8], dimensions={0}, use_global_device_ids=true
  ROOT %cc = (bf16[8,32]{1,0}, bf16[64,32]{1,0}) custom-call(%all-gather.1), custom_call_target="AsyncCollectiveStart"
}

%continuation (p0: bf16[8,32], p1: bf16[64,32]) -> bf16[64,32] {
  %p0 = bf16[8,32]{1,0} parameter(0)
  %all-gather.2 = bf16[64,32]{1,0} all-gather(%p0), channel_id=7, replica_groups=[1,8]<=[8], dimensions={0}, use_global_device_ids=true
  ROOT %r = bf16[64,32]{1,0} add(%all-gather.2, %all-gather.2)
}

%body (p: (s32[], bf16[8,32])) -> (s32[], bf16[8,32]) {
  %p = (s32[], bf16[8,32]{1,0}) parameter(0)
  %w = bf16[8,32]{1,0} get-tuple-element(%p), index=1
  %s = (bf16[8,32]{1,0}, bf16[64,32]{1,0}) fusion(%w), kind=kCustom, calls=%start_fusion
  %c = bf16[64,32]{1,0} fusion(%w, %x), kind=kOutput, calls=%continuation
  %all-gather.3 = bf16[64,32]{1,0} all-gather(%w), channel_id=8, replica_groups=[1,8]<=[8], dimensions={0}, use_global_device_ids=true
  ROOT %t = (s32[], bf16[8,32]{1,0}) tuple(%i, %w)
}

%cond (p: (s32[], bf16[8,32])) -> pred[] {
  ROOT %c = pred[] constant(true)
}

ENTRY %main (x: bf16[8,32]) -> bf16[8,32] {
  %x = bf16[8,32]{1,0} parameter(0)
  %while.4 = (s32[], bf16[8,32]{1,0}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"5"}}
  %all-reduce.5 = f32[16]{0} all-reduce(%y), channel_id=7, replica_groups=[1,8]<=[8], to_apply=%add
  ROOT %r = bf16[8,32]{1,0} get-tuple-element(%while.4), index=1
}
"""


def test_copies_of_one_collective_count_once():
  """The TPU compiler's async collective fusions repeat one all-gather (same
  ``channel_id``) in the start fusion and its continuations: one collective, counted
  once per execution (here 2 distinct channels x 5 trips), not once per copy (before:
  15; the 7B step on v5e 16x16 read 105 GiB of all-gathers where 27 were gathered)."""
  c = scale_plan.collective_bytes(_HLO_ASYNC, 8)
  assert c["all-gather"]["count"] == 2 * 5
  assert c["all-gather"]["bytes"] == 2 * 5 * 64 * 32 * 2
  # another kind with the same channel number is another collective
  assert c["all-reduce"]["count"] == 1 and c["all-reduce"]["bytes"] == 16 * 4


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


def test_replica_groups_iota_explicit_and_cross_slice_bytes():
  """Iota groups with a transpose, explicit groups, and the DCN split: with devices
  0-3 on slice 0 and 4-7 on slice 1, groups {0,4},{1,5}... cross slices, {0..3} do not."""
  g = scale_plan.replica_groups("x), replica_groups=[4,2]<=[2,4]T(1,0), dims", 8)
  assert g == [[0, 4], [1, 5], [2, 6], [3, 7]]
  assert scale_plan.replica_groups("replica_groups=[2,4]<=[8], to_apply", 8) == [
      [0, 1, 2, 3], [4, 5, 6, 7]]
  assert scale_plan.replica_groups("replica_groups={{0,2},{1,3}}, x", 4) == [[0, 2], [1, 3]]
  assert scale_plan.replica_groups("to_apply=%add", 3) == [[0, 1, 2]]
  hlo = _HLO.replace("replica_groups=[2,4]<=[8]", "replica_groups=[4,2]<=[2,4]T(1,0)")
  c = scale_plan.collective_bytes(hlo, 8, slice_of=[0] * 4 + [1] * 4)
  # the all-reduce now pairs i with i + 4 (across slices); the loop's collectives use
  # all 8 devices (also across); bytes equal the per-kind totals
  assert c["dcn"]["bytes"] == (c["all-reduce"]["bytes"] + c["all-gather"]["bytes"]
                               + c["reduce-scatter"]["bytes"])
  inside = scale_plan.collective_bytes(_HLO.replace("replica_groups=[1,8]<=[8]",
                                                    "replica_groups=[2,4]<=[8]"), 8,
                                       slice_of=[0] * 4 + [1] * 4)
  assert inside["dcn"]["bytes"] == inside["reduce-scatter"]["bytes"]   # only the RS spans


def test_hybrid_mesh_keeps_fsdp_inside_a_slice():
  """Devices from two slices (stand-ins with ``slice_index``): data across slices."""
  class Dev:
    def __init__(self, i, s):
      self.id, self.slice_index, self.process_index, self.platform = i, s, 0, "cpu"
      self.device_kind = "fake"
  devs = jax.devices()[:8]
  fakes = [Dev(d.id, d.id // 4) for d in devs]
  assert partition.num_slices(fakes) == 2 and partition.num_slices(devs) == 1
  with pytest.raises(Exception, match="one slice"):
    partition.make_mesh(8, fakes)


def test_tpu_plan_compiles_the_tiny_model_for_a_v5e_slice():
  """The TPU compiler (libtpu) compiles the train step for v5e 2x2 ahead of time: the
  splash kernels are in the program, FSDP gathers weights, memory and cost come back."""
  pytest.importorskip("libtpu", reason="libtpu is not installed (pip install -e .[tpu]):"
                      " the TPU compiler is needed to compile for a TPU slice")
  devices = scale_plan.tpu_devices("v5e:2x2")
  assert len(devices) == 4 and "v5" in devices[0].device_kind.lower()
  cfg = scale_plan.plan_config("tiny", 256, "none", True, "bfloat16",
                               attention_impl="splash")
  r = scale_plan.compile_step(cfg, 512, partition.make_mesh(4, devices), 2, min_bytes=0)
  assert r["hlo"].count("tpu_custom_call") >= 3          # splash fwd, dq, dkv
  param_bytes = r["num_params"] * 4
  assert r["params"] == param_bytes // 4
  # every sharded weight gathered at least once in bf16 (the compute dtype; the
  # float32 bytes were the bound while async-fusion copies were counted), at most 3x
  assert param_bytes // 2 <= r["collectives"]["all-gather"]["bytes"] <= 3 * param_bytes
  assert r["temp"] > 0 and r["peak"] >= r["argument"]
  assert 0.2 < r["flops"] / scale_plan.hand_flops(dict(r, b=2), 256) < 3.0


def test_tpu_plan_two_slices_reduce_gradients_across_dcn_only():
  """Two v5e 2x2 slices (8 chips): FSDP within a slice, data parallel across slices.
  The mesh's data axis is the slice; the weight all-gathers stay in a slice; the
  gradients cross the DCN (megascale all-reduce sends of the 1/4 FSDP shards; the
  compiler sends them in bf16, measured)."""
  pytest.importorskip("libtpu", reason="libtpu is not installed (pip install -e .[tpu]):"
                      " the TPU compiler is needed to compile for a TPU slice")
  devices = scale_plan.tpu_devices("v5e:2x2", slices=2)
  assert len(devices) == 8 and partition.num_slices(devices) == 2
  mesh = partition.make_mesh(4, devices)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4}
  for row in mesh.devices:                      # one slice per data index
    assert len({d.slice_index for d in row}) == 1
  cfg = scale_plan.plan_config("tiny", 256, "none", True, "bfloat16",
                               attention_impl="splash")
  r = scale_plan.compile_step(cfg, 512, mesh, 1, min_bytes=0)
  c = r["collectives"]
  param_bytes = r["num_params"] * 4
  assert c["all-gather"]["bytes"] >= param_bytes // 2     # in-slice bf16 weight gathers
  assert 0 < c["dcn"]["bytes"] < c["all-gather"]["bytes"]
  assert c["dcn"]["bytes"] >= param_bytes // 8            # the shards' gradients
  assert c["dcn"]["count"] == r["hlo"].count("_xla_megascale_transfer_type") // 2


def test_tpu_target_without_libtpu_is_one_error_line():
  """Where libtpu is missing the TPU plan says so in one line (status 2)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  if importlib.util.find_spec("libtpu") is not None:
    pytest.skip("libtpu is installed: the TPU target runs instead of refusing")
  proc = subprocess.run([sys.executable, "-m", "experiments.benchmarks.scale_plan",
                         "--target=tpu:v5e:2x2"], capture_output=True, text=True,
                        timeout=120, cwd=scale_plan.__file__.rsplit("/experiments/", 1)[0])
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith("error: --target=tpu:... needs")
