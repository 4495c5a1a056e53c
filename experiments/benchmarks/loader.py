r"""How fast the prepared-shard loader cuts train batches, and what prefetching overlaps.

  python -m experiments.benchmarks.loader [--data=DIR] [--tokens=67108864]
      [--batch=32] [--seq_len=1024] [--seconds=3] [--demo=true]
      [--out=experiments/results/loader.txt]

**Loader.** Without ``--data``, writes synthetic prepared sets into a temporary
directory through the project's own writer (``prepared.write_shards``: shards,
manifest, sha256; uniform random ids under a word-level Hugging Face tokenizer): a
GPT-2-sized vocabulary (50,257 ids, ``uint16`` shard) and a 100,000-id one
(``uint32``), ``--tokens`` tokens each (64M by default: 128 and 256 MB). Each set is
loaded the way the trainer loads it (``prepared.load_from_config``: memmapped,
verified once) and its train batches are cut by the trainer's ``ChunkSampler.batch``
(epoch permutation, this host's rows, ``release_pages``, the per-batch id check
``base.check_ids``, the first-read check of each 1 MiB block's CRC32
``base.check_blocks``, int32) for ``--seconds`` each, at consecutive steps from 0 as
in training (crossing epochs: a new epoch's permutation is part of the cost):

* ``batch``: ``ChunkSampler.batch`` with the shard in the page cache (read once
  first), from a fresh load (every block checked when first read, within the row);
  a whole memmapped shard's rows are read with one ``preadv`` each
  (``base.read_rows``);
* ``batch, blocks unchecked``: the worst case of the block checks, every batch
  checking all the blocks its rows touch (as at the start of a run on a shard much
  bigger than the batches read so far); the line under the table gives the one-time
  cost of checking every block of the shard;
* ``batch, no block checks``: ``batch`` without the block checks (the manifest's
  checksums detached), measured right after it: the steady cost of the checks;
* ``batch + to_global``: plus ``partition.to_global`` onto the CPU device (what the
  trainer puts on the devices; a GPU adds a PCIe copy of 128 KiB per step);
* ``batch, cold cache``: the shard's pages dropped from the page cache first
  (``posix_fadvise(DONTNEED)`` on its file only): the disk's random reads;
* ``before: per-token gather``: what ``ChunkSampler.batch`` did before (fancy-index
  the memmap with an index per token, ``release_pages``, check, widen), for
  comparison.

The ratio column is against 6M tokens/s, what the GPT-2-small step consumes on one
H200 (``README``: 607k tokens/s per GPU, 8 GPUs per host is about 5M; 6M is the figure
of issue 21).

**Prefetch** (``--demo``). Trains a tiny model with the trainer on the bundled corpus,
the batch made artificially slow (``ChunkSampler.batch`` sleeps ``D`` ms, D = the
measured step time), with ``train.prefetch`` 0 and 2, logging every step (the loop
blocks on each step's loss, as at every log, eval and checkpoint) and every 1000
steps (JAX's asynchronous dispatch alone keeps the host one step ahead). Then traces
steps with ``train.profile_steps`` (the trainer's profiler) and reads the trace
(``jax.profiler.ProfileData``): the share of the batch-making time (the
``prefetch_batch`` annotation) that ran while XLA executed a step.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

_DATA = flags.DEFINE_string("data", "", "A prepared directory (default: synthetic sets "
                            "written into a temporary directory).")
_TOKENS = flags.DEFINE_integer("tokens", 64 << 20, "Train tokens of each synthetic set.")
_BATCH = flags.DEFINE_integer("batch", 32, "Sequences per batch (per host).")
_SEQ = flags.DEFINE_integer("seq_len", 1024, "Tokens per sequence.")
_SECONDS = flags.DEFINE_float("seconds", 3.0, "Seconds of each loader measurement.")
_DEMO = flags.DEFINE_bool("demo", True, "Also measure prefetching in the trainer.")
_STEPS = flags.DEFINE_integer("demo_steps", 40, "Train steps of each prefetch run.")
_OUT = flags.DEFINE_string("out", "experiments/results/loader.txt",
                           "Results file ('' = print only).")

TARGET = 6e6      # tokens/s one host's GPT-2-small step consumes on the H200 (issue 21)


# ----------------------------------------------------------------------------- loader

def synthetic_set(out: str, vocab: int, tokens: int) -> str:
  """A prepared set of uniform random ids (``prepared.write_shards``)."""
  from tokenizers import Tokenizer, models, pre_tokenizers

  from tcsm_jax.data import prepared, tokenizer
  words = {f"w{i}": i for i in range(vocab - 1)}
  words["<|endoftext|>"] = vocab - 1
  wl = Tokenizer(models.WordLevel(words, unk_token="<|endoftext|>"))
  wl.pre_tokenizer = pre_tokenizers.Whitespace()
  tok = tokenizer.HuggingFace(wl.to_str(), f"synthetic-{vocab}")
  dtype = np.uint16 if vocab <= 1 << 16 else np.uint32
  rng = np.random.default_rng(vocab)

  class Lazy:                      # written in pieces: flat memory
    def __init__(self, n):
      self.n = n

    def __len__(self):
      return self.n

    def __getitem__(self, sl):
      return rng.integers(0, vocab, len(range(*sl.indices(self.n))), dtype=dtype)

  prepared.write_shards(out, {"train": Lazy(tokens), "validation": Lazy(1 << 20)}, tok,
                        name=f"synthetic-{vocab}")
  prepared.verify(out, progress=False)     # record the hashes, as prepare_data does
  return out


def _rate(fn, seconds: float, step0: int, stride: int):
  """(tokens/s, batches/s) of ``fn(step)`` over consecutive calls."""
  fn(step0)
  n, t0 = 0, time.perf_counter()
  tokens = 0
  while True:
    out = fn(step0 + 1 + n * stride)
    tokens += out.size if hasattr(out, "size") else np.asarray(out).size
    n += 1
    dt = time.perf_counter() - t0
    if dt >= seconds:
      return tokens / dt, n / dt


def _warm(path) -> None:
  """Reads a file once (into the page cache)."""
  if path:
    with open(path, "rb") as f:           # a benchmark's own temporary file
      while f.read(16 << 20):
        pass


def _drop_cache(path: str) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
  finally:
    os.close(fd)


def loader_rows(path: str, batch: int, seq_len: int, seconds: float):
  from tcsm_jax.data import base, prepared
  from tcsm_jax.training import config as config_lib, partition
  cfg = config_lib.default_config().data
  cfg.name, cfg.path, cfg.seq_len = "prepared", path, seq_len
  ds = prepared.load_from_config(cfg)          # what the trainer's build() calls
  tokens = ds.train
  sampler = base.ChunkSampler(tokens, seq_len, batch, seed=0)
  stride = 1        # consecutive steps, as in training (a new epoch's permutation too)
  sh = partition.batch_sharding(partition.make_mesh(1))
  rows = []
  shape = f"{batch} x {seq_len} {tokens.dtype.name}"

  def gather(step):
    starts = sampler.indices(step) * seq_len
    out = tokens[starts[:, None] + np.arange(seq_len)].astype(np.int32)
    base.release_pages(tokens)
    return base.check_ids(out, tokens, "x")

  def put(step):
    x = partition.to_global(sampler.batch(step), sh)
    x.block_until_ready()
    return x

  _warm(tokens.filename if getattr(tokens, "filename", None) else None)
  rows.append(("batch", shape) + _rate(sampler.batch, seconds, 0, stride))
  sums = getattr(tokens, "block_sums", None)
  once = None
  if sums is not None:
    def unchecked(step):
      sums.forget()
      return sampler.batch(step)

    rows.append(("batch, blocks unchecked", shape) + _rate(unchecked, seconds, 0, stride))
    tokens.block_sums = None           # the same path without the block checks: A/B
    rows.append(("batch, no block checks", shape) + _rate(sampler.batch, seconds, 0,
                                                           stride))
    tokens.block_sums = sums
    sums.forget()
    t = time.perf_counter()
    sums.check(np.arange(len(sums.crc32), dtype=np.int64) * sums.block_bytes, 1, "x")
    once = (time.perf_counter() - t, len(tokens) * tokens.dtype.itemsize)
  rows.append(("batch + to_global", shape) + _rate(put, seconds, 0, stride))
  rows.append(("before: per-token gather", shape) + _rate(gather, seconds, 0, stride))
  if hasattr(os, "posix_fadvise") and getattr(tokens, "filename", None):
    _drop_cache(tokens.filename)
    rows.append(("batch, cold cache", shape) + _rate(sampler.batch, seconds, 0, stride))
  return rows, len(tokens), once


# ----------------------------------------------------------------------------- prefetch

def _demo_config(**kw):
  from experiments.configs import kjv_tiny
  c = kjv_tiny.get_config()
  c.data.seq_len = 128
  c.model.num_layers, c.model.width, c.model.num_heads = 2, 128, 4
  c.train.batch_size = 16
  c.train.num_steps = _STEPS.value
  c.train.eval_every = 100_000
  c.train.eval_batches = 1
  c.train.checkpoint_every = 100_000
  c.train.async_checkpoint = False
  c.train.tensorboard = False
  c.optim.warmup_steps = 2
  for k, v in kw.items():
    a, b = k.split(".")
    c[a][b] = v
  return c


def _train(root: str, name: str, delay: float, **kw):
  """Seconds per step of a trainer run (train_time_sec / steps), and its workdir."""
  from tcsm_jax.data import base
  from tcsm_jax.training import trainer
  real = base.ChunkSampler.batch

  def slow(self, step):
    time.sleep(delay)
    return real(self, step)

  base.ChunkSampler.batch = slow
  try:
    workdir = os.path.join(root, name)
    last = trainer.train_and_evaluate(_demo_config(**kw), workdir,
                                      stop_at_step=_STEPS.value - 1)
  finally:
    base.ChunkSampler.batch = real
  return last["train_time_sec"] / (_STEPS.value - 1), workdir


def _intervals(events):
  return sorted((e.start_ns, e.start_ns + e.duration_ns) for e in events)


def _union(iv):
  out = []
  for a, b in sorted(iv):
    if out and a <= out[-1][1]:
      out[-1][1] = max(out[-1][1], b)
    else:
      out.append([a, b])
  return out


def _overlap(iv, busy) -> float:
  tot = 0.0
  for a, b in iv:
    for c, d in busy:
      tot += max(0.0, min(b, d) - max(a, c))
  return tot


def trace_overlap(workdir: str):
  """(share of ``prefetch_batch`` time during XLA execution, batches seen, thread)."""
  from jax.profiler import ProfileData
  files = glob.glob(os.path.join(workdir, "profile", "**", "*.xplane.pb"), recursive=True)
  pd = ProfileData.from_file(sorted(files)[-1])
  batches, busy, threads = [], [], set()
  for plane in pd.planes:
    device = plane.name.startswith("/device:")
    for line in plane.lines:
      evs = list(line.events)
      if device or "PjRtCpuClient" in line.name or "XLAEigen" in line.name:
        # XLA executing: the device planes' events; on the CPU the executor threads'
        # regions (StartRegion ... StopRegion) and their timed events.
        start = None
        for e in sorted(evs, key=lambda e: e.start_ns):
          if e.name == "ThreadpoolListener::StartRegion":
            start = e.start_ns
          elif e.name == "ThreadpoolListener::StopRegion" and start is not None:
            busy.append((start, e.start_ns))
            start = None
          elif e.duration_ns > 0:
            busy.append((e.start_ns, e.start_ns + e.duration_ns))
      mine = [e for e in evs if e.name == "prefetch_batch"]
      if mine:
        batches += mine
        threads.add(line.name)
  iv = _intervals(batches)
  total = sum(b - a for a, b in iv)
  share = _overlap(iv, _union(busy)) / total if total else float("nan")
  return share, len(iv), total / max(len(iv), 1) / 1e6


def demo_rows(root: str):
  rows = []
  base_t, _ = _train(root, "base", 0.0, **{"train.prefetch": 2, "train.log_every": 1})
  delay = round(base_t, 3)
  for log_every in (1, 1000):
    for depth in (0, 2):
      t, _ = _train(root, f"p{depth}_l{log_every}", delay,
                    **{"train.prefetch": depth, "train.log_every": log_every})
      rows.append((depth, log_every, delay * 1e3, t * 1e3))
  traces = []
  for depth in (0, 2):
    _, wd = _train(root, f"trace{depth}", delay, **{
        "train.prefetch": depth, "train.log_every": 1,
        "train.profile_steps": f"{_STEPS.value // 3},{2 * _STEPS.value // 3}"})
    traces.append((depth,) + trace_overlap(wd))
  return base_t * 1e3, rows, traces


# ----------------------------------------------------------------------------- main

def main(argv):
  del argv
  from experiments import common
  command = "python -m experiments.benchmarks.loader " + " ".join(sys.argv[1:])
  lines = [f"{common.provenance_line()} with: {command.strip()}", ""]

  def emit(s=""):
    print(s, flush=True)
    lines.append(s)

  tmp = tempfile.mkdtemp(prefix="tcsm_loader_")
  try:
    sets = [_DATA.value] if _DATA.value else []
    if not sets:
      for vocab in (50_257, 100_000):
        t = time.time()
        sets.append(synthetic_set(os.path.join(tmp, f"v{vocab}"), vocab, _TOKENS.value))
        print(f"wrote {sets[-1]} in {time.time() - t:.1f} s", flush=True)
    emit("Loader: ChunkSampler.batch on memmapped prepared shards (trainer path), "
         f"{_SECONDS.value:g} s per row")
    emit("")
    emit("| path | train tokens | batch (per host) | tokens/s | batches/s | x 6M tok/s |")
    emit("| --- | ---: | --- | ---: | ---: | ---: |")
    checks = []
    for path in sets:
      rows, n, once = loader_rows(path, _BATCH.value, _SEQ.value, _SECONDS.value)
      for name, shape, tps, bps in rows:
        emit(f"| {name} | {n / 1e6:.0f}M | {shape} | {tps / 1e6:.1f}M | {bps:,.0f} | "
             f"{tps / TARGET:.1f}x |")
      if once is not None:
        checks.append(f"- {os.path.basename(path)}: {once[1] / 2**20:,.0f} MiB in "
                      f"{once[0] * 1e3:,.0f} ms ({once[1] / once[0] / 1e9:.1f} GB/s)")
    if checks:
      emit("")
      from tcsm_jax.data import prepared
      emit(f"One-time cost of the block checks: every {prepared.BLOCK_BYTES >> 10} KiB "
           "block of the train shard read and its CRC32 compared (page cache), once per "
           "process:")
      for c in checks:
        emit(c)
    if _DEMO.value:
      emit("")
      emit("Prefetch: trainer steps of a 2 x 128 model (batch 16 x 128, bundled "
           "corpus, CPU), the batch slowed by D ms of sleep")
      base_ms, rows, traces = demo_rows(tmp)
      emit(f"step time without the delay (prefetch 2, log every step): {base_ms:.1f} ms")
      emit("")
      emit("| train.prefetch | log every | D ms | ms per step |")
      emit("| ---: | ---: | ---: | ---: |")
      for depth, log_every, d, t in rows:
        emit(f"| {depth} | {log_every} | {d:.0f} | {t:.1f} |")
      emit("")
      emit("Trace (train.profile_steps, log every step): share of the batch-making "
           "time (prefetch_batch annotations) spent while XLA executed a step")
      emit("")
      emit("| train.prefetch | batches traced | ms per batch | overlapped with a step |")
      emit("| ---: | ---: | ---: | ---: |")
      for depth, share, n, ms in traces:
        emit(f"| {depth} | {n} | {ms:.1f} | {share:.0%} |")
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  if _OUT.value:
    with open(_OUT.value, "w", encoding="utf-8") as f:   # a repository file, not user data
      f.write("\n".join(lines) + "\n")
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
