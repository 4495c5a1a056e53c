r"""Runs one study end to end: trains its variants over seeds, writes the evidence.

  python -m experiments.study --study=objectives --outdir=DIR [--seeds=3] \
      [--budget=1.0] [--quick]

Studies: objectives, teacher, distill, reward, reward_bias (issue 15's reward
fine-tuning fix on the corpus) (``experiments/study/<name>.py`` holds
each one's design, claim and verdict rules). Writes ``DIR/runs.csv`` (every evaluation
of every run), ``DIR/summary.csv`` (mean and std over seeds at each step), ``DIR/*.png``
(curves with +-1 std bands) and ``DIR/REPORT.md`` (claim, setup, tables, verdicts).
Re-running with the same flags skips finished runs and resumes unfinished ones; more
``--seeds`` adds seeds. ``--budget`` scales every step count; ``--quick`` is a
smoke-sized run for tests (30-100 s each, a re-run included, on the 2-core CPU machine
with the compile cache: measured 2026-11-26 at commit 4785798).
"""

import importlib
import json
import os
import shlex
import sys

import jax
from absl import flags, logging

from experiments import cli, common
from experiments.study import report, runner
from experiments.study.context import Context
from tcsm_jax import errors, fs
from tcsm_jax.training import log_setup

STUDIES = ("objectives", "teacher", "distill", "reward", "reward_bias", "hamming",
           "ratio", "guidance")

_STUDY = flags.DEFINE_enum("study", None, list(STUDIES), "The study to run.")
_OUT = flags.DEFINE_string("outdir", None, "Output directory (local or bucket).")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds per variant (>= 1; 2 in --quick).")
_BUDGET = flags.DEFINE_float("budget", 1.0, "Multiplier of every training step count "
                             "(> 0).")
_QUICK = flags.DEFINE_bool("quick", False, "Smoke-sized study for tests.")
_SHARD = flags.DEFINE_string(
    "shard", "", "'i/n': train only every n-th run starting at i (parallel workers on "
    "one machine; train the shared runs first with --prereq_only, then run once "
    "without --shard to write the report).")
_PREREQ = flags.DEFINE_bool("prereq_only", False, "Train the shared runs (teachers, "
                            "judge, reference) and stop.")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Write the report from the "
                                  "finished runs only (partial studies); train nothing "
                                  "but missing shared runs.")
_CACHE = flags.DEFINE_string(
    "compile_cache", "", "JAX persistent compilation cache (runs of one variant over "
    "seeds share executables); default <outdir>/jax_cache for a local outdir, 'none' "
    "to disable; $JAX_COMPILATION_CACHE_DIR wins.")
_JUDGE, _CONV = common.define_judge_flags(
    " (default: the study's own trained judge; studies distill, reward, guidance, ratio, "
    "reward_bias)")
flags.mark_flags_as_required(["study", "outdir"])


def check_design(outdir, design: dict) -> None:
  """``outdir/study.json`` records the study, budget and quick mode of the first run;
  a later run with other values is refused before anything trains (seeds may grow)."""
  path = fs.join(outdir, "study.json")
  if fs.exists(path):
    try:
      saved = json.loads(fs.read_text(path))
    except ValueError:
      raise errors.WorkdirError(f"{path} is not a study record (corrupt?)") from None
    diff = {k: (saved.get(k), v) for k, v in design.items() if saved.get(k) != v}
    if diff:
      what = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in diff.items())
      raise errors.FlagError(f"--outdir {outdir} holds another study design ({what}); "
                             "use a new --outdir")
  else:
    common.write_json(path, design)


def parse_shard(spec: str):
  """``'i/n'`` -> ``(i, n)`` with ``0 <= i < n`` (``FlagError`` otherwise)."""
  try:
    i, n = (int(p) for p in spec.split("/"))
  except ValueError:
    raise errors.FlagError(f"--shard {spec!r}: write i/n, e.g. 0/3") from None
  common.check_flag(0 <= i < n, f"--shard {spec!r}: need 0 <= i < n")
  return i, n


def run_study(name: str, ctx: Context, shard=None, prereq_only: bool = False,
              report_only: bool = False) -> str:
  """Runs study ``name`` in ``ctx.outdir``; returns the path of its REPORT.md ('' when
  only shared runs or one shard were trained)."""
  mod = importlib.import_module(f"experiments.study.{name}")
  fs.makedirs(ctx.outdir)
  design = dict(study=name, budget=ctx.budget, quick=ctx.quick)
  if ctx.judge:                       # another judge, other numbers: part of the design
    design.update(judge=ctx.judge, gen_ppl_convention=ctx.gen_ppl_convention)
  check_design(ctx.outdir, design)
  runs = mod.plan(ctx)                    # trains the shared runs first
  for r in runs:
    common.validate_config(r.config)
  if prereq_only:
    return ""
  if shard is not None:
    ctx.run_all(mod.NAME, runs[shard[0]::shard[1]])
    return ""
  if report_only:
    missing = [f"{r.variant} seed {r.seed}" for r in runs
               if not runner.is_finished(ctx.outdir, r)]
    if missing:
      ctx.notes["missing"] = missing
      logging.warning("report from finished runs only; %d missing: %s", len(missing),
                      ", ".join(missing))
    runs = [r for r in runs if runner.is_finished(ctx.outdir, r)]
  rows = ctx.run_all(mod.NAME, runs)
  report.write_runs(ctx.outdir, rows)
  summary = report.summarize(rows)
  report.write_summary(ctx.outdir, summary)
  setup, sections, verdicts = mod.report_(ctx, rows, summary)
  diverged = [r for r in rows if r.get("diverged") == 1.0]
  if diverged:
    sections = list(sections) + [
        "### Diverged runs\n\nStopped by the trainer's divergence guard (their curves "
        "are in runs.csv; they have no final measurements and are left out of the "
        "tables above):\n\n" + "\n".join(
            f"- {r['variant']} seed {r['seed']}, stopped at step "
            f"{int(r.get('stopped_step', r['step']))}" for r in diverged)]
  if ctx.judge:
    setup += (f"\n\n**Judge:** generative perplexity is scored by `--judge={ctx.judge}` "
              f"(`--gen_ppl_convention={ctx.gen_ppl_convention}`), not by the study's own "
              "causal judge described above (still trained as a prerequisite).")
  if ctx.notes.get("missing"):
    setup += ("\n\n**Partial study:** these runs had not finished and are left out: "
              + ", ".join(ctx.notes["missing"]) + ".")
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
  common.check_judge_spec(_JUDGE.value)
  use_compile_cache(_CACHE.value, _OUT.value)
  log_setup.quiet_libraries()
  ctx = Context(outdir=_OUT.value, seeds=list(range(_SEEDS.value)),
                budget=_BUDGET.value, quick=_QUICK.value, judge=_JUDGE.value,
                gen_ppl_convention=_CONV.value,
                command="python -m experiments.study " + " ".join(
                    shlex.quote(a) for a in sys.argv[1:]))
  shard = parse_shard(_SHARD.value) if _SHARD.value else None
  path = run_study(_STUDY.value, ctx, shard, _PREREQ.value, _REPORT_ONLY.value)
  if path:
    print(fs.read_text(path))


if __name__ == "__main__":
  cli.run(main)
