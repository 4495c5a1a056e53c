"""The sampler compiled for a TPU slice (experiments.benchmarks.tpu_sample_plan): one
on-device loop over the reverse steps, nothing sent to the host inside it."""

import pytest

from experiments.benchmarks import tpu_sample_plan

# The shape of the TPU compiler's loops: no known_trip_count, a ``counter < N``
# condition; a host callback as a custom call; a megascale send.
_HLO = """HloModule jit_on_mesh

%cond (p: (s32[], f32[4])) -> pred[] {
  %c = s32[]{:T(128)} constant(16)
  %p = (s32[]{:T(128)}, f32[4]) parameter(0)
  %i = s32[]{:T(128)} get-tuple-element(%p), index=0
  ROOT %lt = pred[]{:T(512)} compare(%i, %c), direction=LT
}

%body (p: (s32[], f32[4])) -> (s32[], f32[4]) {
  %p = (s32[], f32[4]) parameter(0)
  %cb = f32[4] custom-call(%x), custom_call_target="xla_ffi_python_cpu_callback"
  ROOT %t = (s32[], f32[4]) tuple(%i, %cb)
}

ENTRY %main (x: f32[4]) -> f32[4] {
  %while.61 = (s32[], f32[4]) while(%init), condition=%cond, body=%body, metadata={op_name="jit(on_mesh)/while"}
  %send.1 = (f32[4], u32[], token[]) send(%a, %t), channel_id=2, is_host_transfer=true
  ROOT %r = f32[4] get-tuple-element(%while.61), index=1
}
"""


def test_while_loops_and_host_ops_of_a_tpu_style_program():
  assert tpu_sample_plan.while_loops(_HLO) == [("while.61", 16, "jit(on_mesh)/while")]
  assert tpu_sample_plan.host_ops(_HLO) == ["xla_ffi_python_cpu_callback", "send"]


def test_sampler_compiled_for_v5e_is_one_device_loop():
  """Tiny model, 16 analytic steps, v5e 2x2 (libtpu): a 16-trip loop around the
  network's scanned layers, the splash kernel inside, no host transfer."""
  pytest.importorskip("libtpu", reason="libtpu is not installed (pip install -e .[tpu]):"
                      " the TPU compiler is needed to compile for a TPU slice")
  from experiments.benchmarks import scale_plan  # pylint: disable=g-import-not-at-top
  from tcsm_jax.training import partition  # pylint: disable=g-import-not-at-top
  devices = scale_plan.tpu_devices("v5e:2x2")
  cfg = scale_plan.plan_config("tiny", 256, "none", True, "bfloat16",
                               attention_impl="splash")
  r = tpu_sample_plan.compile_sampler(cfg, 500, partition.make_mesh(1, devices), 2, 16,
                                      "analytic")
  trips = [t for _, t, _ in r["loops"]]
  assert 16 in trips and trips.count(16) == 1
  assert r["host"] == [] and r["kernels"] >= 1
  assert 0 < r["peak"] < 2 ** 30
