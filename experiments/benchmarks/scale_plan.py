r"""The pod plan, checked on a laptop: compile the real sharded train step on fake devices.

  python -m experiments.benchmarks.scale_plan --devices=256 \
      --sizes=gpt2_small,gpt2_medium,1b,7b --mesh=fsdp,data,fsdp+data \
      [--batches=1,2] [--remat=none,nothing_saveable] [--seq_len=1024] [--vocab=50257]
  python -m experiments.benchmarks.scale_plan --target=tpu:v5e:2x2 [--slices=2] \
      --sizes=gpt2_small --mesh=fsdp --remat=nothing_saveable --batches=1,8 \
      [--extrapolate_to=v5e:16x16]

``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (N = ``--devices``) is set before
JAX is imported, so the CPU pretends to be N devices. For each model size, mesh, remat
policy and per-device batch the train step of ``tcsm_jax.training.step`` (TCSM score
form, AdamW, EMA, the NaN guard; bf16 activations, float32 parameters) is lowered with
abstract shapes (``jax.eval_shape``: no parameter is allocated) under the shardings the
trainer uses (``tcsm_jax.training.partition``) and compiled. Reported per device:

* ``params`` / ``opt`` / ``ema``: bytes of the local shards of the train state, counted
  from the shardings (equal to XLA's argument bytes minus the batch: checked);
* ``temp``: XLA's ``memory_analysis().temp_size_in_bytes`` (activations, gradients,
  gathered weights, the optimizer update's temporaries);
* ``peak``: arguments + outputs + temps - aliased (the state is donated);
* collectives per step, read from the compiled HLO (``collective_bytes``): the full
  (unsharded) buffer sizes of all-gathers, reduce-scatters and all-reduces, loop bodies
  counted by their trip counts, and the bytes one device sends in a ring
  (``(g - 1) / g`` of the buffer for all-gather and reduce-scatter, twice that for
  all-reduce, ``g`` the group size).

Meshes: ``data`` (parameters replicated, ``mesh.fsdp=1``), ``fsdp`` (every device on
the FSDP axis) and ``fsdp+data`` (FSDP over ``--fsdp_group`` devices, 8 by default: a
host or an NVLink island; data parallel across groups). The fit table takes the peak
at two per-device batches (``--batches``), which is affine in the batch, and gives the
largest per-device batch that fits 16 / 32 / 80 / 95 GiB per chip for each remat
policy (``extrapolated`` past the compiled batches).

XLA:CPU's buffer assignment is not the TPU's or GPU's: it schedules differently and
has no bf16 arithmetic (it converts to float32), so temps are indicative, parameters
and collectives exact.

The TPU compiler (``--target=tpu:v5e:2x2[,v5p:2x2x1,...]``, libtpu installed: ``pip
install -e .[tpu]``) replaces all of that: the step is compiled ahead of time for the
devices of a described slice (``jax.experimental.topologies``; no TPU attached, the host
stays the CPU), with splash attention by default (``--attention_impl``). Per chip it
prints the state, arguments, temporaries and peak, the collectives read from the TPU
HLO (trip counts from the loop conditions; ``--slices=N`` joins N slices by DCN and
reports the cross-slice bytes apart: the TPU writes them as megascale sends), the cost
analysis FLOPs against the 6N hand count (``6N seen``: as the cost analysis counts a
scanned loop body, once), the number of Mosaic kernels and the compile time; then the
largest per-chip batch that fits the chip's HBM. ``--extrapolate_to`` carries each row
to a bigger slice of the same chip (state exact, temps as compiled). Results:
``experiments/results/tpu_plan.md``. Only one process may load libtpu at a time
(``ALLOW_MULTIPLE_LIBTPU_LOAD=1`` lifts that).
"""

import os
import re
import sys


def _devices_from_argv(default: int = 8) -> int:
  for a in sys.argv[1:]:
    m = re.match(r"^--devices=(\d+)$", a)
    if m:
      return int(m.group(1))
  return default


if __name__ == "__main__":
  _flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                  os.environ.get("XLA_FLAGS", ""))
  os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count="
                             f"{_devices_from_argv()}").strip()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from experiments.configs import base  # noqa: E402
from tcsm_jax import models, objective, processes  # noqa: E402
from tcsm_jax.training import experiment, optim, partition  # noqa: E402
from tcsm_jax.training import state as state_lib, step as step_lib  # noqa: E402

GIB = 2 ** 30
HBM_GIB = (16, 32, 80, 95)
DTYPE_BYTES = {"f64": 8, "s64": 8, "u64": 8, "f32": 4, "s32": 4, "u32": 4, "bf16": 2,
               "f16": 2, "s16": 2, "u16": 2, "s8": 1, "u8": 1, "pred": 1}
COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all",
               "collective-permute")
MEGASCALE_KINDS = {"ALL_REDUCE": "all-reduce", "ALL_GATHER": "all-gather",
                   "REDUCE_SCATTER": "reduce-scatter", "ALL_TO_ALL": "all-to-all"}


# ----------------------------------------------------------------- HLO collectives


def _shapes_bytes(type_text: str):
  """Bytes of every array type in an HLO type string (a tuple gives several)."""
  out = []
  for dt, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", type_text):
    if dt in DTYPE_BYTES:
      n = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
      out.append(n * DTYPE_BYTES[dt])
  return out


def replica_groups(line: str, num_devices: int):
  """The device groups of one collective instruction (lists of partition ids): iota
  form ``[G,S]<=[dims]T(perm)``, explicit ``{{0,1},{2,3}}``, ``source_target_pairs``
  (a collective-permute's pairs), or every device when none is written."""
  m = re.search(r"replica_groups=\[([\d,]+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", line)
  if m:
    shape = [int(x) for x in m.group(1).split(",")]
    dims = [int(x) for x in m.group(2).split(",")]
    ids = np.arange(int(np.prod(dims))).reshape(dims)
    if m.group(3):
      ids = ids.transpose([int(x) for x in m.group(3).split(",")])
    return ids.reshape(shape[0], -1).tolist()
  m = re.search(r"(?:replica_groups|source_target_pairs)=\{((?:\{[\d,]*\},?)+)\}", line)
  if m:
    groups = [[int(x) for x in g.split(",") if x]
              for g in re.findall(r"\{([\d,]*)\}", m.group(1))]
    if any(groups):
      return groups
  return [list(range(num_devices))]


def _group_size(line: str, default: int) -> int:
  m = re.search(r"replica_groups=\[(\d+),(\d+)\]", line)
  if m:
    return int(m.group(2))
  m = re.search(r"replica_groups=\{\{([\d,]+)\}", line)
  if m:
    return len(m.group(1).split(","))
  return default


def _computations(hlo_text: str):
  """``{name: [instruction lines]}`` of an HLO module's text."""
  comps, cur = {}, None
  for line in hlo_text.splitlines():
    head = re.match(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
    if head and not line.startswith(" "):
      cur = head.group(2)
      comps[cur] = []
    elif cur is not None and not line.startswith("}"):
      comps[cur].append(line)
  return comps


def condition_trip_count(lines):
  """The trip count of a ``while`` from its condition computation, where the compiler
  did not write ``known_trip_count`` (the TPU compiler does not): a condition
  ``counter < constant(N)`` of a loop counting from 0 (jax's scan and fori loops) runs
  N times. ``None`` for any other form."""
  text = "\n".join(lines)
  consts = re.findall(r"=\s*s32\[\]\S*\s+constant\((\d+)\)", text)
  if len(consts) == 1 and "direction=LT" in text and len(lines) <= 6:
    return int(consts[0])
  return None


def _channel(rest: str, kind: str):
  """``(kind, channel_id)`` of an instruction, ``None`` without one (send/recv channel
  numbers are their own space: a send's id may equal an all-reduce's)."""
  m = re.search(r"channel_id=(\d+)", rest)
  return (kind, int(m.group(1))) if m else None


_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.+?)\s+([a-z][\w\-]*)\((.*)$")


def collective_bytes(hlo_text: str, num_devices: int, slice_of=None):
  """Per-device collectives of one execution of a compiled HLO module.

  Returns ``{kind: {"count", "bytes", "ring_bytes"}}`` for ``COLLECTIVES``: ``bytes``
  is the full buffer (an all-gather's result, a reduce-scatter's operand, an
  all-reduce's result), ``ring_bytes`` what one device sends with a ring algorithm.
  Instructions inside a ``while`` body count ``known_trip_count`` times (once, and
  ``unknown_trip_counts`` is incremented, where the compiler did not record it).
  With ``slice_of`` (``[num_devices]``: the slice of each partition id, i.e. of each
  device of the mesh in its flat order) the collectives whose groups span more than one
  slice (carried by DCN) are also summed under ``"dcn"`` (all kinds together); the
  others are in-slice (ICI). The TPU compiler writes a multi-slice program per slice:
  its in-slice collectives have groups inside one slice, and each cross-slice one is a
  ``send`` to the megascale runtime (``_xla_megascale_transfer_type``), counted here
  under its kind and under ``"dcn"``.
  """
  texts = _computations(hlo_text)
  comps, entry, cur = {}, None, None
  for line in hlo_text.splitlines():
    head = re.match(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
    if head and not line.startswith(" "):
      cur = head.group(2)
      comps[cur] = {"own": [], "calls": []}
      if head.group(1):
        entry = cur
      continue
    if cur is None or line.startswith("}"):
      continue
    m = _INSTR.match(line)
    if not m:
      continue
    type_text, op, rest = m.groups()
    kind = op[:-len("-start")] if op.endswith("-start") else op
    dcn = re.search(r'_xla_megascale_transfer_type="(\w+)"', rest)
    if op == "send" and dcn:
      # Multi-slice TPU programs: a cross-slice (DCN) collective is a host-transfer
      # send/recv pair handled by the megascale runtime; the send's first operand is
      # the buffer, and the slices form the group.
      kind = MEGASCALE_KINDS.get(dcn.group(1), dcn.group(1).lower())
      g = len(set(slice_of)) if slice_of is not None else 2
      comps[cur]["own"].append((kind, _shapes_bytes(type_text)[0], g, True,
                                _channel(rest, "send")))
      continue
    if kind in COLLECTIVES and not op.endswith("-done"):
      sizes = _shapes_bytes(type_text)
      full = max(sizes) if op.endswith("-start") else sum(sizes)
      g = _group_size(rest, num_devices)
      if kind == "reduce-scatter":
        full *= g
      cross = False
      if slice_of is not None:
        cross = any(len({slice_of[i] for i in grp}) > 1
                    for grp in replica_groups(rest, num_devices))
      comps[cur]["own"].append((kind, full, g, cross, _channel(rest, kind)))
    if op == "while":
      body = re.search(r"body=%?([\w.\-]+)", rest)
      trip = re.search(r'known_trip_count\D*?(\d+)', rest)
      trip = int(trip.group(1)) if trip else None
      cond = re.search(r"condition=%?([\w.\-]+)", rest)
      if trip is None and cond:
        trip = condition_trip_count(texts.get(cond.group(1), []))
      comps[cur]["calls"].append((body.group(1), trip))
    for callee in re.findall(r"(?:calls|to_apply|branch_computations)=\{?%?([\w.\-]+)",
                             rest):
      comps[cur]["calls"].append((callee, 1))
  totals = {k: {"count": 0, "bytes": 0, "ring_bytes": 0.0}
            for k in COLLECTIVES + ("dcn",)}
  unknown = [0]
  seen = {}              # channel id -> (entry, executions): one collective, many copies

  def visit(name, mult, depth=0):
    if name not in comps or depth > 50:
      return
    for i, own in enumerate(comps[name]["own"]):
      if own[4] is not None:     # copies of one collective (the TPU compiler's async
        key = ("channel", own[4])   # collective fusions repeat it): counted once
        seen[key] = (own, max(mult, seen.get(key, (own, 0))[1]))
      else:                      # a computation called from several places: each call
        key = (name, i)
        seen[key] = (own, seen.get(key, (own, 0))[1] + mult)
    for callee, trip in comps[name]["calls"]:
      if trip is None:
        unknown[0] += 1
      visit(callee, mult * (trip or 1), depth + 1)

  visit(entry or next(iter(comps)), 1)
  for (kind, full, g, cross, _), mult in seen.values():
    factor = 2.0 if kind == "all-reduce" else 1.0
    for k in (kind, "dcn") if cross else (kind,):
      totals[k]["count"] += mult
      totals[k]["bytes"] += mult * full
      totals[k]["ring_bytes"] += mult * factor * full * (g - 1) / max(g, 1)
  totals["unknown_trip_counts"] = unknown[0]
  return totals


# ----------------------------------------------------------------- the step


def plan_config(size: str, seq_len: int, remat: str, scan: bool, dtype: str,
                chunk_size: int = 0, attention_impl: str = "xla"):
  config = base.get_config()
  config.model.size = size
  config.model.dtype = dtype
  config.model.remat = remat != "none"
  if remat != "none":
    config.model.remat_policy = remat
  config.model.scan_layers = scan
  config.model.attention_impl = attention_impl
  config.data.seq_len = seq_len
  config.loss.chunk_size = chunk_size
  return config


def mesh_for(kind: str, devices, fsdp_group: int):
  n = len(devices)
  fsdp = {"data": 1, "fsdp": n, "fsdp+data": min(fsdp_group, n)}[kind]
  return partition.make_mesh(fsdp, devices=devices)


def local_bytes(abstract, shardings) -> int:
  total = 0
  for x, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)):
    total += int(np.prod(s.shard_shape(x.shape))) * np.dtype(x.dtype).itemsize
  return total


def build(config, vocab: int, mesh=None):
  """``(abstract train state, train_step, optimizer)`` of a config (nothing allocated)."""
  proc = processes.get(config.process, vocab)
  model = models.build_denoiser(config, vocab, proc.num_states)
  sched = experiment.schedule_from_config(config.schedule)
  apply = lambda p, x_t, s, train, k: model.apply({"params": p}, x_t, s)
  loss_fn = objective.make_loss_fn(config.loss, proc, sched, apply)
  optimizer, lr = optim.make_optimizer(config.optim, 1000)
  seq = config.data.seq_len

  def create(key):
    params = model.init({"params": key}, jnp.zeros((1, seq), jnp.int32),
                        jnp.ones((1,)))["params"]
    return state_lib.create(params, optimizer, key)

  abstract = jax.eval_shape(create, jax.random.PRNGKey(0))
  return abstract, step_lib.make_train_step(loss_fn, optimizer, lr, 0.999, mesh=mesh)


def state_bytes(abstract, mesh, min_bytes: int = partition.DEFAULT_MIN_BYTES):
  """Per-device bytes of ``params``, ``opt`` (optimizer state), ``ema`` on ``mesh``,
  and ``sharded``: the full size of the parameters that are sharded (FSDP)."""
  sh = partition.state_shardings(abstract, mesh, min_bytes)
  part = lambda name: local_bytes(getattr(abstract, name), getattr(sh, name))
  sharded = sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
                for x, s in zip(jax.tree.leaves(abstract.params),
                                jax.tree.leaves(sh.params))
                if any(a is not None for a in s.spec))
  return dict(params=part("params"), opt=part("opt_state"), ema=part("ema_params"),
              sharded=sharded)


def compile_step(config, vocab: int, mesh, per_device_batch: int,
                 min_bytes: int = partition.DEFAULT_MIN_BYTES, pin_batch: bool = True):
  """Lowers and compiles the sharded train step with abstract shapes.

  Returns a dict: per-device ``params``, ``opt``, ``ema``, ``batch`` bytes (from the
  shardings), ``sharded`` (full bytes of the FSDP-sharded parameters), XLA's
  ``argument``/``output``/``temp``/``alias`` bytes, ``peak``, ``collectives``
  (``collective_bytes``; cross-slice under ``"dcn"`` when the mesh spans TPU slices),
  ``num_params``, ``embed_params`` (the input embedding table, a lookup),
  ``flops`` (the compiler's cost analysis of the per-device program; Mosaic kernels
  such as splash attention are not in it), ``compile_s``, ``hlo`` (the compiled text).
  ``pin_batch``: trace under the mesh (``make_train_step(..., mesh=mesh)``: activations
  pinned to the batch layout).
  """
  abstract, train_step = build(config, vocab, mesh if pin_batch else None)
  sh = partition.state_shardings(abstract, mesh, min_bytes)
  bsh = partition.batch_sharding(mesh)
  n = mesh.devices.size
  seq = config.data.seq_len
  batch = jax.ShapeDtypeStruct((per_device_batch * n, seq), jnp.int32)
  step = jax.jit(train_step, in_shardings=(sh, bsh),
                 out_shardings=(sh, partition.replicated(mesh)), donate_argnums=(0,))
  t0 = time.perf_counter()
  compiled = step.lower(abstract, batch).compile()
  compile_s = time.perf_counter() - t0
  ma = compiled.memory_analysis()
  out = dict(state_bytes(abstract, mesh, min_bytes), batch=per_device_batch * seq * 4,
             argument=ma.argument_size_in_bytes, output=ma.output_size_in_bytes,
             temp=ma.temp_size_in_bytes, alias=ma.alias_size_in_bytes,
             num_params=models.count_params(abstract.params), compile_s=compile_s)
  out["peak"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
  hlo = compiled.as_text()
  devs = list(mesh.devices.flat)
  slice_of = ([getattr(d, "slice_index", 0) for d in devs]
              if partition.num_slices(devs) > 1 else None)
  out["collectives"] = collective_bytes(hlo, n, slice_of)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  out["flops"] = float((cost or {}).get("flops", 0.0))
  flat = {jax.tree_util.keystr(k): v for k, v in
          jax.tree_util.tree_leaves_with_path(abstract.params)}
  out["embed_params"] = sum(int(np.prod(v.shape)) for k, v in flat.items()
                            if "'embed'" in k)
  # the scanned blocks' parameters (leading axis: layers): the compiler's cost analysis
  # counts a while body once, so its FLOPs see one layer of them
  scanned = sum(int(np.prod(v.shape)) for k, v in flat.items() if "'blocks'" in k)
  layers = config.model.get("num_layers") or models.transformer.SIZES[
      config.model.size][0]
  out["loop_hidden_params"] = scanned - scanned // layers if config.model.scan_layers else 0
  out["hlo"] = hlo
  return out


def hand_collectives(kind: str, n: int, fsdp_group: int, param_bytes: int,
                     sharded: int):
  """Collectives per step and device by hand on ``n`` devices (float32 gathers and
  gradients; the FSDP all-gather counted twice: forward, and again in the backward):
  ``{"all-gather", "reduce-scatter", "all-reduce": full bytes, "ring": bytes one device
  sends}``."""
  g = {"data": 1, "fsdp": n, "fsdp+data": min(fsdp_group, n)}[kind]
  d = n // g
  replicated = param_bytes - sharded if g > 1 else param_bytes
  ag = 2 * sharded if g > 1 else 0
  rs = sharded if g > 1 else 0
  ar_full = replicated                 # replicated grads over all n devices
  ar_shard = sharded / g if (g > 1 and d > 1) else 0   # sharded grads over data axis
  ring = ((ag + rs) * (g - 1) / g if g > 1 else 0) + 2 * ar_full * (n - 1) / n + (
      2 * ar_shard * (d - 1) / d if d > 1 else 0)
  return {"all-gather": ag, "reduce-scatter": rs, "all-reduce": ar_full + ar_shard,
          "ring": ring}


# ----------------------------------------------------------------- the table

_DEVICES = flags.DEFINE_integer("devices", 8, "Fake host devices (set before JAX "
                                "starts): the slice planned for.")
_COMPILE_DEVICES = flags.DEFINE_integer(
    "compile_devices", 0, "Compile on this many devices (0: --devices) and extrapolate "
    "to --devices: parameters, optimizer and EMA bytes exact for --devices (from the "
    "shardings), temps from the smaller compile, collectives by hand.")
_SIZES = flags.DEFINE_list("sizes", ["gpt2_small", "gpt2_medium", "1b", "7b"],
                           "Model sizes (tcsm_jax.models.transformer.SIZES).")
_MESH = flags.DEFINE_list("mesh", ["fsdp", "data", "fsdp+data"], "Meshes.")
_GROUP = flags.DEFINE_integer("fsdp_group", 8, "FSDP group size of the fsdp+data mesh.")
_BATCHES = flags.DEFINE_list("batches", ["1", "2"], "Per-device batches compiled (two: "
                             "the fit is affine in the batch).")
_REMAT = flags.DEFINE_list("remat", ["none", "nothing_saveable"],
                           "Remat policies: none or model.remat_policy names.")
_SEQ = flags.DEFINE_integer("seq_len", 1024, "Sequence length.")
_VOCAB = flags.DEFINE_integer("vocab", 50257, "Vocabulary (GPT-2 BPE).")
_DTYPE = flags.DEFINE_string("dtype", "bfloat16", "model.dtype.")
_SCAN = flags.DEFINE_bool("scan_layers", True, "model.scan_layers (compile time flat "
                          "in depth; loop bodies counted by trip count).")
_CHUNK = flags.DEFINE_integer("chunk_size", 0, "loss.chunk_size.")
_TARGET = flags.DEFINE_string(
    "target", "cpu", "cpu (fake XLA:CPU devices, --devices) or tpu:TOPOLOGY[,TOPOLOGY...]"
    " (e.g. tpu:v5e:2x2,v5p:2x2x1): compile with the TPU compiler (libtpu, pip install "
    "-e .[tpu]) for the described slices, ahead of time; no TPU needed.")
_SLICES = flags.DEFINE_integer("slices", 1, "TPU slices joined by DCN (--target=tpu:...):"
                               " data parallel across slices, FSDP within one.")
_ATTN = flags.DEFINE_string("attention_impl", "", "model.attention_impl (default: xla on "
                            "--target=cpu, splash on tpu).")
_EXTRA = flags.DEFINE_list("extrapolate_to", [], "TPU topologies (same chip) to carry the "
                           "compiled rows to: state bytes exact from their shardings, "
                           "temps as compiled (labelled extrapolated).")

# HBM per chip (GiB) by TPU generation (the topology name's prefix).
TPU_HBM_GIB = {"v4": 32, "v5e": 16, "v5litepod": 16, "v5p": 95, "v6e": 32}


def fits(rows, hbm_gib):
  """Largest per-device batch whose affine peak fits ``hbm_gib``, from two rows."""
  (b1, p1), (b2, p2) = [(r["b"], r["peak"]) for r in rows[:2]]
  slope = (p2 - p1) / (b2 - b1)
  fixed = p1 - slope * b1
  cap = hbm_gib * GIB
  if fixed + slope > cap:
    return 0
  return int((cap - fixed) // slope) if slope > 0 else 10 ** 6


def require_libtpu():
  """Exits with one line (status 2) when the TPU compiler is not installed."""
  try:
    import libtpu  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    print("error: --target=tpu:... needs the TPU compiler: pip install -e '.[tpu]' "
          "(libtpu, about 700 MB)", file=sys.stderr)
    sys.exit(2)


def tpu_devices(topology: str, slices: int = 1):
  """The devices of a described TPU slice (``v5e:2x2``; ``slices`` joined by DCN),
  from libtpu's topology description: compile for them, never run."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  kw = {"num_slices": slices} if slices > 1 else {}
  if topology.split(":")[0] == "v4":
    kw["chip_config_name"] = "megacore"      # one device per chip, as TPU VMs run v4
  return topologies.get_topology_desc(platform="tpu", topology_name=topology,
                                      **kw).devices


def tpu_fsdp(mesh_kind: str, n: int, slices: int) -> int:
  """``mesh.fsdp`` of a mesh kind on ``n`` chips in ``slices`` slices (FSDP never
  crosses a slice: ``fsdp`` is at most one slice)."""
  per = n // slices
  return {"data": 1, "fsdp": per, "fsdp+data": min(_GROUP.value, per)}[mesh_kind]


def hbm_gib(topology: str) -> int:
  gen = topology.split(":")[0]
  if gen not in TPU_HBM_GIB:
    raise app.UsageError(f"unknown TPU generation {gen!r} in {topology!r}; one of "
                         f"{sorted(TPU_HBM_GIB)}")
  return TPU_HBM_GIB[gen]


def hand_flops(r, seq: int, as_counted: bool = False) -> float:
  """6 N per token (N without the input embedding table, a lookup) for one chip's
  ``b x seq`` tokens: forward 2N, backward 4N; attention's own FLOPs not included.
  ``as_counted``: N as the compiler's cost analysis sees it, where a scanned loop body
  (the layers) is counted once: all but one layer's parameters left out."""
  n = r["num_params"] - r["embed_params"]
  if as_counted:
    n -= r.get("loop_hidden_params", 0)
  return 6.0 * n * r["b"] * seq


def _libtpu_version() -> str:
  try:
    from importlib import metadata  # pylint: disable=g-import-not-at-top
    return metadata.version("libtpu")
  except Exception:  # pylint: disable=broad-except
    return "?"


def tpu_main(topologies_):
  """The plan compiled by the TPU compiler for each topology (see the module doc)."""
  batches = [int(b) for b in _BATCHES.value]
  slices = _SLICES.value
  attn = _ATTN.value or "splash"
  seq = _SEQ.value
  print(f"TPU compiler (libtpu {_libtpu_version()}, jax {jax.__version__}), ahead of "
        f"time for {', '.join(topologies_)} x {slices} slice(s) | seq {seq} | V "
        f"{_VOCAB.value} | {_DTYPE.value} activations, float32 params, AdamW + EMA | "
        f"scan_layers={_SCAN.value} | attention {attn} | loss.chunk_size={_CHUNK.value}")
  head = (f"{'topology':<12}{'size':<12}{'mesh':>10}{'remat':>18}{'b/chip':>7}"
          f"{'state GiB':>10}{'arg GiB':>8}{'temp GiB':>9}{'peak GiB':>9}"
          f"{'HLO AG/RS/AR/A2A GiB':>22}{'DCN GiB':>8}{'6N TFLOP':>9}{'TFLOP':>7}"
          f"{'6N seen':>8}{'ratio':>6}{'kernels':>8}{'compile s':>10}")
  fit_rows = []
  for topo in topologies_:
    devices = tpu_devices(topo, slices)
    n = len(devices)
    print(f"\n== {topo} x {slices}: {n} chips ({devices[0].device_kind}), "
          f"{hbm_gib(topo)} GiB HBM per chip")
    print(head)
    print("-" * len(head))
    for size in _SIZES.value:
      for mesh_kind in _MESH.value:
        mesh = partition.make_mesh(tpu_fsdp(mesh_kind, n, slices), devices)
        for remat in _REMAT.value:
          cfg = plan_config(size, seq, remat, _SCAN.value, _DTYPE.value, _CHUNK.value,
                            attn)
          rows = []
          for b in batches:
            try:
              r = compile_step(cfg, _VOCAB.value, mesh, b)
            except Exception as e:  # pylint: disable=broad-except
              msg = str(e).splitlines()[0] if str(e) else type(e).__name__
              if "RESOURCE_EXHAUSTED" not in msg and "memory" not in msg.lower():
                raise
              print(f"{topo:<12}{size:<12}{mesh_kind:>10}{remat:>18}{b:>7}   does not "
                    f"fit: {msg[:150]}", flush=True)
              rows.append(dict(b=b, oom=True))
              continue
            r["b"] = b
            rows.append(r)
            c = r["collectives"]
            hlo = "/".join(f"{c[k]['bytes'] / GIB:.2f}" for k in
                           ("all-gather", "reduce-scatter", "all-reduce", "all-to-all"))
            hf = hand_flops(r, seq)
            seen = hand_flops(r, seq, as_counted=True)
            state = r["params"] + r["opt"] + r["ema"]
            print(f"{topo:<12}{size:<12}{mesh_kind:>10}{remat:>18}{b:>7}"
                  f"{state / GIB:>10.2f}{r['argument'] / GIB:>8.2f}"
                  f"{r['temp'] / GIB:>9.2f}{r['peak'] / GIB:>9.2f}{hlo:>22}"
                  f"{c['dcn']['bytes'] / GIB:>8.2f}{hf / 1e12:>9.2f}"
                  f"{r['flops'] / 1e12:>7.2f}{seen / 1e12:>8.2f}{r['flops'] / seen:>6.2f}"
                  f"{r['hlo'].count('tpu_custom_call'):>8}{r['compile_s']:>10.1f}",
                  flush=True)
            for big in _EXTRA.value:
              bdev = tpu_devices(big, slices)
              bmesh = partition.make_mesh(tpu_fsdp(mesh_kind, len(bdev), slices), bdev)
              abstract, _ = build(cfg, _VOCAB.value)
              st = state_bytes(abstract, bmesh)
              peak = r["peak"] + sum(st[k] - r[k] for k in ("params", "opt", "ema"))
              print(f"{'  -> ' + big:<12}{size:<12}{mesh_kind:>10}{remat:>18}{b:>7}"
                    f"{(st['params'] + st['opt'] + st['ema']) / GIB:>10.2f}{'':>8}"
                    f"{r['temp'] / GIB:>9.2f}{peak / GIB:>9.2f}   extrapolated: "
                    f"{len(bdev)} chips, temps as compiled", flush=True)
          fit_rows.append((topo, size, mesh_kind, remat, rows))
  print(f"\nlargest per-chip batch of {seq} tokens that fits the chip's HBM (peak affine "
        f"in the batch through b = {batches[0]}, {batches[-1]}; values above "
        f"{batches[-1]} extrapolated; 0: not even batch {batches[0]}; -: one batch "
        "compiled)")
  head = f"{'topology':<12}{'size':<12}{'mesh':>10}{'remat':>18}{'HBM GiB':>8}{'fits':>8}"
  # kernels: Mosaic custom calls (tpu_custom_call) in the compiled step: splash
  # attention's forward, dq and dkv kernels (counted once per scanned body).
  print(head)
  print("-" * len(head))
  for topo, size, mesh_kind, remat, rows in fit_rows:
    h = hbm_gib(topo)
    if rows[0].get("oom"):
      fit = "0"
    elif len(rows) < 2:
      fit = "-"
    elif rows[1].get("oom"):
      fit = f"<{rows[1]['b']}"
    else:
      fit = fits(rows, h)
      fit = ">1000" if fit > 1000 else str(fit)
    print(f"{topo:<12}{size:<12}{mesh_kind:>10}{remat:>18}{h:>8}{fit:>8}", flush=True)


def main(_):
  if _TARGET.value.startswith("tpu:"):
    require_libtpu()
    tops = [t for t in _TARGET.value[len("tpu:"):].split(",") if t]
    for t in tops + list(_EXTRA.value):
      hbm_gib(t)
    return tpu_main(tops)
  if _TARGET.value != "cpu":
    raise app.UsageError(f"--target must be cpu or tpu:TOPOLOGY[,...], got "
                         f"{_TARGET.value!r}")
  n = _DEVICES.value
  nc = _COMPILE_DEVICES.value or n
  devices = jax.devices()
  if len(devices) < max(n, nc):
    raise app.UsageError(f"--devices={n} but JAX sees {len(devices)} devices (set "
                         "XLA_FLAGS before JAX starts: run as python -m ...scale_plan)")
  batches = [int(b) for b in _BATCHES.value]
  print(f"planned for {n} devices, compiled on {nc} fake CPU devices | seq {_SEQ.value}"
        f" | V {_VOCAB.value} | {_DTYPE.value} activations, float32 params, AdamW + EMA"
        f" | scan_layers={_SCAN.value} | loss.chunk_size={_CHUNK.value}")
  head = (f"{'size':<12}{'params':>8}{'mesh':>10}{'remat':>18}{'b/dev':>6}"
          f"{'param GiB':>10}{'opt GiB':>9}{'ema GiB':>9}{'temp GiB':>9}{'peak GiB':>9}"
          f"{'AG GiB':>8}{'RS GiB':>8}{'AR GiB':>8}{'ring GiB':>9}"
          f"{'HLO AG/RS/AR/A2A GiB @' + str(nc):>28}{'compile s':>10}")
  print(head)
  print("-" * len(head))
  fit_rows = []
  compiled = {}        # meshes of equal shape at the compile size compile once
  for size in _SIZES.value:
    for mesh_kind in _MESH.value:
      target = mesh_for(mesh_kind, devices[:n], _GROUP.value)
      mesh = mesh_for(mesh_kind, devices[:nc], _GROUP.value)
      for remat in _REMAT.value:
        rows = []
        cfg = plan_config(size, _SEQ.value, remat, _SCAN.value, _DTYPE.value,
                          _CHUNK.value)
        for b in batches:
          key = (size, tuple(mesh.shape.items()), remat, b)
          if key not in compiled:
            compiled[key] = compile_step(cfg, _VOCAB.value, mesh, b)
          r = dict(compiled[key])
          if nc != n:       # the state on the planned slice, exactly; temps as compiled
            abstract, _ = build(cfg, _VOCAB.value)
            big = state_bytes(abstract, target)
            r["peak"] += sum(big[k] - r[k] for k in ("params", "opt", "ema"))
            r.update({k: big[k] for k in ("params", "opt", "ema", "sharded")})
          r["b"] = b
          rows.append(r)
          hc = hand_collectives(mesh_kind, n, _GROUP.value, r["num_params"] * 4,
                                r["sharded"])
          c = r["collectives"]
          hlo = "/".join(f"{c[k]['bytes'] / GIB:.2f}" for k in
                         ("all-gather", "reduce-scatter", "all-reduce", "all-to-all"))
          print(f"{size:<12}{r['num_params'] / 1e9:>7.2f}B{mesh_kind:>10}{remat:>18}"
                f"{b:>6}{r['params'] / GIB:>10.2f}{r['opt'] / GIB:>9.2f}"
                f"{r['ema'] / GIB:>9.2f}{r['temp'] / GIB:>9.2f}{r['peak'] / GIB:>9.2f}"
                f"{hc['all-gather'] / GIB:>8.2f}{hc['reduce-scatter'] / GIB:>8.2f}"
                f"{hc['all-reduce'] / GIB:>8.2f}{hc['ring'] / GIB:>9.2f}{hlo:>28}"
                f"{r['compile_s']:>10.1f}", flush=True)
        fit_rows.append((size, mesh_kind, remat, rows))
  print(f"\nlargest per-device batch of {_SEQ.value} tokens that fits (peak affine in "
        f"the batch from b = {batches[0]}, {batches[1]}; larger values extrapolated; 0 = "
        "does not fit even at batch 1)")
  head = f"{'size':<12}{'mesh':>10}{'remat':>18}" + "".join(
      f"{str(h) + ' GiB':>9}" for h in HBM_GIB)
  print(head)
  print("-" * len(head))
  for size, mesh_kind, remat, rows in fit_rows:
    print(f"{size:<12}{mesh_kind:>10}{remat:>18}"
          + "".join(f"{fits(rows, h):>9}" for h in HBM_GIB), flush=True)


if __name__ == "__main__":
  app.run(main)
