r"""Compile time of the main job's first and second start, with and without the
persistent compilation cache (``experiments/cli.py``: on by default).

  python -m experiments.benchmarks.compile_cache [--num_steps=200] [--out=DIR]

Runs ``python -m experiments.train --config=experiments/configs/kjv_tiny.py`` (with
``--config.train.num_steps``, default 200: the same executables as the full job -- train
step, eval step, the summary's sampler -- in less wall time) as separate processes
with a fresh cache directory (``TCSM_JAX_CACHE``):

1. ``cold``: empty cache, new workdir;
2. ``warm, new workdir``: same command on a new workdir (everything compiles the same);
3. ``warm, resume``: the first workdir again, the README's "re-run to resume";
4. ``cache off``: ``--compile_cache=false``, new workdir (every start compiles).

Each process reports, through ``jax.monitoring``, the seconds spent in XLA compilation
or cache loading (``backend``: the ``/jax/core/compile/backend_compile_duration``
events), in tracing and lowering (``trace+lower``), the number of compilations, the
persistent-cache hits and misses; plus the process's wall time.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_STEPS = flags.DEFINE_integer("num_steps", 200, "config.train.num_steps of each run.")
_OUT = flags.DEFINE_string("out", "", "Directory for workdirs and cache (default: temp).")

# Runs the module given as argv[1] with monitoring listeners; prints one JSON line.
_WRAPPER = r"""
import atexit, json, runpy, sys
from jax import monitoring
from jax._src import dispatch
stats = {"backend_s": 0.0, "trace_lower_s": 0.0, "compiles": 0, "hits": 0, "misses": 0}
def on_duration(event, secs, **kw):
  if event == dispatch.BACKEND_COMPILE_EVENT:
    stats["backend_s"] += secs; stats["compiles"] += 1
  elif event in (dispatch.JAXPR_TRACE_EVENT, dispatch.JAXPR_TO_MLIR_MODULE_EVENT):
    stats["trace_lower_s"] += secs
def on_event(event, **kw):
  if event == "/jax/compilation_cache/cache_hits": stats["hits"] += 1
  if event == "/jax/compilation_cache/cache_misses": stats["misses"] += 1
monitoring.register_event_duration_secs_listener(on_duration)
monitoring.register_event_listener(on_event)
atexit.register(lambda: sys.stderr.write("COMPILE_STATS " + json.dumps(stats) + "\n"))
module = sys.argv[1]
sys.argv = [module] + sys.argv[2:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def run_once(workdir: str, cache: str, steps: int, extra=()):
  env = dict(os.environ, TCSM_JAX_CACHE=cache, JAX_PLATFORMS="cpu")
  for k in ("JAX_COMPILATION_CACHE_DIR", "TCSM_COMPILE_CACHE",
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "XLA_FLAGS"):
    env.pop(k, None)
  cmd = [sys.executable, "-c", _WRAPPER, "experiments.train",
         "--config=experiments/configs/kjv_tiny.py", f"--workdir={workdir}",
         f"--config.train.num_steps={steps}", *extra]
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
  wall = time.perf_counter() - t0
  lines = [l for l in proc.stderr.splitlines() if l.startswith("COMPILE_STATS ")]
  if proc.returncode or not lines:
    raise RuntimeError(f"{' '.join(cmd[3:])} failed ({proc.returncode}):\n"
                       f"{proc.stderr[-3000:]}")
  stats = json.loads(lines[-1].split(" ", 1)[1])
  stats["wall_s"] = wall
  return stats


def main(_):
  root = _OUT.value or tempfile.mkdtemp(prefix="compile_cache_")
  cache = os.path.join(root, "jax_cache")
  steps = _STEPS.value
  rows = [("cold (empty cache)", run_once(os.path.join(root, "a"), cache, steps)),
          ("warm, new workdir", run_once(os.path.join(root, "b"), cache, steps)),
          ("warm, resume", run_once(os.path.join(root, "a"), cache, steps)),
          ("cache off", run_once(os.path.join(root, "c"), cache, steps,
                                 ["--compile_cache=false"]))]
  print(f"python -m experiments.train --config=experiments/configs/kjv_tiny.py "
        f"--config.train.num_steps={steps}; cache {cache}")
  head = (f"{'start':<20}{'backend s':>10}{'trace+lower s':>15}{'compiles':>10}"
          f"{'hits':>6}{'misses':>8}{'wall s':>8}")
  print(head)
  print("-" * len(head))
  for name, s in rows:
    print(f"{name:<20}{s['backend_s']:>10.2f}{s['trace_lower_s']:>15.2f}"
          f"{s['compiles']:>10}{s['hits']:>6}{s['misses']:>8}{s['wall_s']:>8.1f}")


if __name__ == "__main__":
  app.run(main)
