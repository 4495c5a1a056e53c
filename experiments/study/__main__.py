r"""Runs one study end to end: trains its variants over seeds, writes the evidence.

  python -m experiments.study --study=objectives --outdir=DIR [--seeds=3] \
      [--budget=1.0] [--quick]

Studies: objectives, teacher, distill, reward (``experiments/study/<name>.py`` holds
each one's design, claim and verdict rules). Writes ``DIR/runs.csv`` (every evaluation
of every run), ``DIR/summary.csv`` (mean and std over seeds at each step), ``DIR/*.png``
(curves with +-1 std bands) and ``DIR/REPORT.md`` (claim, setup, tables, verdicts).
Re-running with the same flags skips finished runs and resumes unfinished ones; more
``--seeds`` adds seeds. ``--budget`` scales every step count; ``--quick`` is a
smoke-sized run (about a minute) for tests.
"""

import importlib
import os
import shlex
import sys

import jax
from absl import flags

from experiments import cli, common
from experiments.study import report
from experiments.study.context import Context
from tcsm_jax import fs
from tcsm_jax.training import log_setup

STUDIES = ("objectives", "teacher", "distill", "reward")

_STUDY = flags.DEFINE_enum("study", None, list(STUDIES), "The study to run.")
_OUT = flags.DEFINE_string("outdir", None, "Output directory (local or bucket).")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds per variant (>= 1; 2 in --quick).")
_BUDGET = flags.DEFINE_float("budget", 1.0, "Multiplier of every training step count "
                             "(> 0).")
_QUICK = flags.DEFINE_bool("quick", False, "Smoke-sized study for tests.")
_CACHE = flags.DEFINE_string(
    "compile_cache", "", "JAX persistent compilation cache (runs of one variant over "
    "seeds share executables); default <outdir>/jax_cache for a local outdir, 'none' "
    "to disable; $JAX_COMPILATION_CACHE_DIR wins.")
flags.mark_flags_as_required(["study", "outdir"])


def run_study(name: str, ctx: Context) -> str:
  """Runs study ``name`` in ``ctx.outdir``; returns the path of its REPORT.md."""
  mod = importlib.import_module(f"experiments.study.{name}")
  fs.makedirs(ctx.outdir)
  runs = mod.plan(ctx)
  for r in runs:
    common.validate_config(r.config)
  rows = ctx.run_all(mod.NAME, runs)
  report.write_runs(ctx.outdir, rows)
  summary = report.summarize(rows)
  report.write_summary(ctx.outdir, summary)
  setup, sections, verdicts = mod.report_(ctx, rows, summary)
  return report.write_report(ctx.outdir, mod.TITLE, mod.CLAIM, setup, ctx.command,
                             sections, verdicts)


def use_compile_cache(flag_value: str, outdir: str) -> str:
  """Turns on JAX's persistent compilation cache; returns its directory ('' = off)."""
  if os.environ.get("JAX_COMPILATION_CACHE_DIR") or flag_value == "none":
    return os.environ.get("JAX_COMPILATION_CACHE_DIR", "")
  path = flag_value or ("" if fs.is_remote(outdir) else os.path.join(outdir, "jax_cache"))
  if path:
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  return path


def main(_):
  common.at_least("seeds", _SEEDS.value, 1)
  common.check_flag(_BUDGET.value > 0, f"--budget must be > 0, got {_BUDGET.value}")
  common.require_output_dir(_OUT.value, "outdir")
  use_compile_cache(_CACHE.value, _OUT.value)
  log_setup.quiet_libraries()
  ctx = Context(outdir=_OUT.value, seeds=list(range(_SEEDS.value)),
                budget=_BUDGET.value, quick=_QUICK.value,
                command="python -m experiments.study " + " ".join(
                    shlex.quote(a) for a in sys.argv[1:]))
  path = run_study(_STUDY.value, ctx)
  print(fs.read_text(path))


if __name__ == "__main__":
  cli.run(main)
