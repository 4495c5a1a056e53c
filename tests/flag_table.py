"""Every flag of every binary with a bad value: the table, and the driver that runs it.

``TABLE`` rows are ``(binary, flag, args, expected)``: the binary's ``BASE`` arguments
(valid values of its required flags) followed by ``args`` must end in exactly one line
``error: ...`` holding ``expected`` (by default ``--<flag>``: the line names the flag)
and exit status 2, without a traceback. ``tests/test_cli.py`` runs the table and checks
that every flag a binary defines has a row (``NO_BAD_VALUE`` lists the flags that take
any value, with the reason).

Cheap by construction: ``python tests/flag_table.py`` (the driver) imports jax and the
project once and runs every binary in the same process, one after the other: it drops
the previous binary's flags from ``absl.flags.FLAGS``, imports the next module, then
for each row parses the command line and runs ``main`` through
``experiments.cli``'s own parser and guard (``cli._parse``, ``cli._guarded``: the code
``cli.run`` runs), capturing stderr and the exit status. One process start (~4 s of
imports) instead of one per row (~4 s each); ``test_cli.py`` also runs one row per
binary as a real ``python -m`` subprocess (slow) to show the driver sees what a user
sees.

Placeholders in ``BASE`` and ``args``: ``{wd}`` a trained diffusion workdir (sequence
length 32, character data), ``{root}`` a scratch directory, ``{afile}`` a regular file,
``{missing}`` a path that does not exist, ``{corpus}`` a small text file, ``{gpt2}`` the
committed tiny Hugging Face GPT-2 (tests/fixtures/gpt2_tiny), ``{mdlm}`` the committed tiny
MDLM checkpoint (tests/fixtures/mdlm_tiny).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import sys
import time
from typing import Dict, List, Tuple

BINARIES = ("experiments.sample", "experiments.evaluate", "experiments.frontier",
            "experiments.finetune", "experiments.distill", "experiments.prepare_data",
            "experiments.study", "experiments.train", "experiments.reward_sweep",
            "experiments.compare_targets", "experiments.judge", "experiments.convert",
            "experiments.benchmarks.md4_gap")

# Valid values of the required flags (each row appends its own; the last value wins).
BASE: Dict[str, List[str]] = {
    "experiments.sample": ["--workdir={wd}", "--num_samples=1", "--steps=1",
                           "--batch_size=1"],
    "experiments.evaluate": ["--workdir={wd}", "--num_t=1", "--num_batches=1"],
    "experiments.frontier": ["--workdir={wd}", "--judge_workdir={wd}",
                             "--outdir={root}/frontier", "--samplers=analytic",
                             "--steps=1", "--temperatures=1", "--top_ps=1",
                             "--num_samples=1", "--batch_size=1"],
    "experiments.finetune": ["--config=experiments/configs/kjv_reward.py",
                             "--workdir={root}/finetune",
                             "--config.finetune.ref_workdir={wd}"],
    "experiments.distill": ["--config=experiments/configs/kjv_tiny.py",
                            "--workdir={root}/distill", "--teacher_workdir={wd}"],
    "experiments.prepare_data": ["--source=text:{corpus}", "--tokenizer=char",
                                 "--out={root}/prepared"],
    "experiments.study": ["--study=objectives", "--outdir={root}/study"],
    "experiments.train": ["--config=experiments/configs/kjv_tiny.py",
                          "--workdir={root}/train"],
    "experiments.reward_sweep": ["--config=experiments/configs/kjv_reward.py",
                                 "--outdir={root}/sweep",
                                 "--config.finetune.ref_workdir={wd}"],
    "experiments.compare_targets": ["--config=experiments/configs/kjv_tiny.py",
                                    "--outdir={root}/compare", "--variants=data:"],
    "experiments.judge": ["--judge=hf:{gpt2}", "--text_file={corpus}"],
    "experiments.convert": ["--from=mdlm:{mdlm}", "--workdir={root}/convert"],
    "experiments.benchmarks.md4_gap": ["--setting=1x32:16:2:1", "--repeats=1"],
}

S, E, F = "experiments.sample", "experiments.evaluate", "experiments.frontier"
FT, D, P = "experiments.finetune", "experiments.distill", "experiments.prepare_data"
ST, T = "experiments.study", "experiments.train"
RS, CT = "experiments.reward_sweep", "experiments.compare_targets"
J, CV = "experiments.judge", "experiments.convert"
MG = "experiments.benchmarks.md4_gap"

_ROWS: List[Tuple] = [
    # experiments.sample
    (S, "workdir", ["--workdir={missing}"], "does not exist"),
    (S, "config", ["--config=no/such_config.py"], "cannot load config file"),
    (S, "num_samples", ["--num_samples=0"], None),
    (S, "steps", ["--steps=0"], None),
    (S, "steps", ["--steps=many"], None),
    (S, "sampler", ["--sampler=greedy"], None),
    (S, "draw", ["--draw=float16"], None),
    (S, "temperature", ["--temperature=0"], None),
    (S, "temperature", ["--temperature=inf"], None),
    (S, "temperature", ["--temperature=nan"], None),
    (S, "top_p", ["--top_p=1.5"], None),
    (S, "top_p", ["--top_p=nan"], None),
    (S, "remask_schedule", ["--remask_schedule=sometimes"], None),
    (S, "remask_eta", ["--remask_eta=2"], None),
    (S, "remask_eta", ["--remask_eta=nan"], None),
    (S, "events_per_call", ["--sampler=first_hitting", "--events_per_call=0"], None),
    (S, "dtype", ["--dtype=float16"], None),
    (S, "batch_size", ["--batch_size=0"], None),
    (S, "seq_len", ["--seq_len=-1"], None),
    (S, "length", ["--length=-5"], None),
    (S, "length", ["--length=40", "--seq_len=50"], "disagree"),
    (S, "overlap", ["--overlap=-2"], None),
    (S, "overlap", ["--length=100", "--overlap=32"], "--overlap 32 must be below"),
    (S, "stop_at_eos", ["--stop_at_eos=maybe"], None),
    (S, "guide", ["--guide=vowels"], None),
    (S, "guide_gamma", ["--guide=token", "--guide_gamma=-1"], None),
    (S, "guide_gamma", ["--guide=token", "--guide_gamma=inf"], None),
    (S, "guide_token_weights", ["--guide=token", "--guide_token_weights=a="], None),
    (S, "guide_token_weights", ["--guide=token", "--guide_token_weights=aeiou"], None),
    (S, "guide_token_weights", ["--guide=token", "--guide_token_weights=a=inf"], None),
    (S, "guide_token_weights", ["--guide=token", "--guide_token_weights=☃=1"], None),
    (S, "guide_classifier_dir", ["--guide=classifier", "--guide_classifier_dir={afile}"],
     None),
    (S, "prompt", ["--prompt=☃☃!"], None),
    (S, "prompt", ["--prompt=" + "in the beginning " * 4], "--prompt encodes to"),
    (S, "suffix", ["--suffix=☃"], None),
    (S, "template", ["--template=and god said ☃__"], None),
    (S, "clean_prompt", ["--clean_prompt=maybe"], None),
    (S, "judge_workdir", ["--judge_workdir={wd}"], "holds a diffusion model"),
    (S, "judge_workdir", ["--judge_workdir={missing}"], "does not exist"),
    (S, "seed", ["--seed=lucky"], None),
    (S, "judge", ["--judge={wd}"], "holds a diffusion model"),
    (S, "judge", ["--judge=hf:{missing}"], "does not exist"),
    (S, "gen_ppl_convention", ["--gen_ppl_convention=md4"], None),
    (S, "unmask_per_call", ["--sampler=confidence", "--unmask_per_call=0"], None),
    (S, "eb_gamma", ["--sampler=entropy_bound", "--eb_gamma=-1"], None),
    (S, "eb_gamma", ["--sampler=entropy_bound", "--eb_gamma=nan"], None),
    (S, "confidence_tau", ["--sampler=confidence_threshold", "--confidence_tau=2"], None),
    # experiments.evaluate
    (E, "workdir", ["--workdir={afile}"], "is a file, not a directory"),
    (E, "config", ["--config=no/such_config.py"], "cannot load config file"),
    (E, "num_t", ["--num_t=0"], None),
    (E, "num_batches", ["--num_batches=-1"], None),
    (E, "split", ["--split=test"], None),
    (E, "raw_params", ["--raw_params=maybe"], None),
    (E, "data", ["--data={missing}"], "does not exist"),
    (E, "name", ["--name=x"], None),
    (E, "name", ["--data={root}", "--name=a/b"], None),
    # experiments.frontier
    (F, "workdir", ["--workdir={missing}"], "does not exist"),
    (F, "judge_workdir", ["--judge_workdir={wd}"], "holds a diffusion model"),
    (F, "outdir", ["--outdir={afile}"], "is a file, not a directory"),
    (F, "samplers", ["--samplers="], "--samplers is empty"),
    (F, "samplers", ["--samplers=analytic,greedy"], None),
    (F, "steps", ["--steps=0"], None),
    (F, "steps", ["--steps=2.5"], None),
    (F, "steps", ["--steps="], None),
    (F, "temperatures", ["--temperatures=inf"], None),
    (F, "temperatures", ["--temperatures=0"], None),
    (F, "temperatures", ["--temperatures="], None),
    (F, "top_ps", ["--top_ps=1.5"], None),
    (F, "top_ps", ["--top_ps=nan"], None),
    (F, "draws", ["--draws=float16"], None),
    (F, "draws", ["--draws="], None),
    (F, "remask_eta", ["--remask_eta=2"], None),
    (F, "remask_schedule", ["--remask_schedule=sometimes"], None),
    (F, "num_samples", ["--num_samples=0"], None),
    (F, "batch_size", ["--batch_size=0"], None),
    (F, "seed", ["--seed=lucky"], None),
    (F, "dtype", ["--dtype=float16"], None),
    (F, "judge", ["--judge=hf:{missing}"], "does not exist"),
    (F, "gen_ppl_convention", ["--gen_ppl_convention=md4"], None),
    (F, "nfe", ["--nfe=0"], None),
    (F, "nfe", ["--nfe=many"], None),
    (F, "eb_gammas", ["--nfe=4", "--eb_gammas=-1"], None),
    (F, "confidence_taus", ["--nfe=4", "--confidence_taus=2"], None),
    # experiments.finetune
    (FT, "config", ["--config=no/such_config.py"], "cannot load config file"),
    (FT, "workdir", ["--workdir={afile}"], "is a file, not a directory"),
    (FT, "num_samples", ["--num_samples=0"], None),
    (FT, "sample_steps", ["--sample_steps=0"], None),
    # experiments.distill
    (D, "config", ["--config=no/such_config.py"], "cannot load config file"),
    (D, "workdir", ["--workdir={afile}"], "is a file, not a directory"),
    (D, "teacher_workdir", ["--teacher_workdir={missing}"], "does not exist"),
    (D, "mode", ["--mode=guess"], None),
    (D, "top_k", ["--top_k=0"], None),
    (D, "tail_samples", ["--tail_samples=0"], None),
    (D, "teacher_weight", ["--teacher_weight=0"], None),
    (D, "teacher_weight", ["--teacher_weight=nan"], None),
    (D, "teacher", ["--teacher=hf:{missing}"], "does not exist"),
    (D, "self", ["--self=maybe"], None),
    (D, "rounds", ["--self", "--rounds=0"], None),
    (D, "teacher_steps", ["--self", "--rounds=2", "--teacher_steps=6"], None),
    (D, "round_train_steps", ["--self", "--round_train_steps=-1"], None),
    (D, "divergence", ["--self", "--divergence=l2"], None),
    # experiments.prepare_data
    (P, "source", ["--source=csv:{corpus}"], "unknown source kind"),
    (P, "source", ["--source=text:{missing}"], None),
    (P, "tokenizer", ["--tokenizer=bytes"], None),
    (P, "out", ["--out={afile}"], None),
    (P, "layout", ["--layout=rows"], None),
    (P, "seq_len", ["--layout=padded", "--seq_len=0"], None),
    (P, "doc_sep", ["--doc_sep=page"], None),
    (P, "text_key", ["--text_key="], None),
    (P, "validation_fraction", ["--validation_fraction=1.5"], None),
    (P, "validation_fraction", ["--validation_fraction=nan"], None),
    (P, "validation_path", ["--validation_path={missing}"], None),
    (P, "tfds_dir", ["--tfds_dir={root}"], None),
    (P, "validation_docs", ["--validation_docs=-1"], None),
    (P, "max_train_docs", ["--max_train_docs=-1"], None),
    (P, "spm_vocab_size", ["--tokenizer=sentencepiece", "--spm_vocab_size=0"], None),
    (P, "eos_token", ["--eos_token=<eos>"], None),
    (P, "pad_token", ["--pad_token=<pad>"], None),
    (P, "max_dropped_fraction", ["--max_dropped_fraction=2"], None),
    (P, "batch_docs", ["--batch_docs=0"], None),
    (P, "overwrite", ["--overwrite=maybe"], None),
    (P, "verify", ["--verify=maybe"], None),
    (P, "verify", ["--verify", "--out={missing}"], "--out: "),
    (P, "progress", ["--progress=maybe"], None),
    # experiments.study
    (ST, "study", ["--study=vibes"], None),
    (ST, "outdir", ["--outdir={afile}"], "is a file, not a directory"),
    (ST, "seeds", ["--seeds=0"], None),
    (ST, "budget", ["--budget=0"], None),
    (ST, "budget", ["--budget=inf"], None),
    (ST, "quick", ["--quick=maybe"], None),
    (ST, "shard", ["--shard=3/2"], None),
    (ST, "prereq_only", ["--prereq_only=maybe"], None),
    (ST, "report_only", ["--report_only=maybe"], None),
    (ST, "compile_cache", ["--compile_cache={afile}"], None),
    (ST, "judge", ["--judge={missing}"], "does not exist"),
    (ST, "judge_workdir", ["--judge_workdir={wd}"], "holds a diffusion model"),
    (ST, "gen_ppl_convention", ["--gen_ppl_convention=md4"], None),
    # experiments.train
    (T, "config", ["--config=no/such_config.py"], "cannot load config file"),
    (T, "workdir", ["--workdir={afile}"], None),
    (T, "summary_samples", ["--summary_samples=-1"], None),
    # experiments.reward_sweep
    (RS, "config", ["--config=no/such_config.py"], "cannot load config file"),
    (RS, "outdir", ["--outdir={afile}"], "is a file, not a directory"),
    (RS, "betas", ["--betas=0"], None),
    (RS, "betas", ["--betas=1,inf"], None),
    (RS, "betas", ["--betas=high"], None),
    (RS, "betas", ["--betas="], None),
    (RS, "judge_workdir", ["--judge_workdir={wd}"], "holds a diffusion model"),
    (RS, "num_samples", ["--num_samples=0"], None),
    (RS, "sample_steps", ["--sample_steps=0"], None),
    (RS, "judge", ["--judge=hf:{missing}"], "does not exist"),
    (RS, "gen_ppl_convention", ["--gen_ppl_convention=md4"], None),
    # experiments.compare_targets
    (CT, "config", ["--config=no/such_config.py"], "cannot load config file"),
    (CT, "outdir", ["--outdir={afile}"], "is a file, not a directory"),
    (CT, "variants", ["--variants=bad name:"], None),
    (CT, "variants", ["--variants=a:loss.form"], None),
    (CT, "variants", ["--variants=a:", "--variants=a:"], None),
    (CT, "judge_workdir", ["--judge_workdir={wd}"], "holds a diffusion model"),
    (CT, "num_samples", ["--num_samples=0"], None),
    (CT, "sample_steps", ["--sample_steps=0"], None),
    (CT, "judge", ["--judge=hf:{missing}"], "does not exist"),
    (CT, "gen_ppl_convention", ["--gen_ppl_convention=md4"], None),
    # experiments.judge (tests/test_judge_binary.py holds more cases)
    (J, "judge", ["--judge={missing}"], "does not exist"),
    (J, "judge_workdir", ["--judge_workdir={wd}"], "holds a diffusion model"),
    (J, "text_file", ["--text_file={missing}"], "does not exist"),
    (J, "separator", ["--separator=comma"], None),
    (J, "max_length", ["--max_length=-1"], None),
    (J, "ppl_batch_size", ["--ppl_batch_size=-1"], None),
    (J, "group_size", ["--group_size=-1"], None),
    (J, "dtype", ["--dtype=float16"], None),
    (J, "json", ["--json={afile}/x.json"], None),
    (J, "gen_ppl_convention", ["--gen_ppl_convention=md4"], None),
    # experiments.convert (tests/test_pretrained.py holds the library's refusals)
    (CV, "from", ["--from=gpt9:/x"], None),
    (CV, "from", ["--from=sedd:{missing}"], "does not exist"),
    (CV, "workdir", ["--workdir={afile}"], None),
    (CV, "tokenizer", ["--tokenizer={missing}"], None),
    (CV, "data", ["--data={missing}"], None),
    (CV, "seq_len", ["--seq_len=-1"], None),
    # experiments.benchmarks.md4_gap (--repeats is sampling_speed's, shared)
    (MG, "setting", ["--setting=6x384"], None),
    (MG, "setting", ["--setting=1x32:16:2:0"], None),
    (MG, "md4", ["--md4=maybe"], None),
]
# Flags every binary has (experiments/cli.py); study defines its own --compile_cache.
for _b in BINARIES:
  _ROWS.append((_b, "verbose", ["--verbose=maybe"], None))
  if _b != ST:
    _ROWS.append((_b, "compile_cache", ["--compile_cache=maybe"], None))

TABLE = [(b, f, args, f"--{f}" if exp is None else exp) for b, f, args, exp in _ROWS]

# Flags with no bad value (any value is valid), with the reason.
NO_BAD_VALUE: Dict[Tuple[str, str], str] = {}

# One row per binary that the slow test also runs as a real ``python -m`` subprocess.
SUBPROCESS_ROWS = [
    (S, "length"), (E, "num_t"), (F, "samplers"), (FT, "num_samples"), (D, "top_k"),
    (P, "batch_docs"), (ST, "seeds"), (T, "summary_samples"), (RS, "betas"),
    (CT, "variants"), (J, "max_length"), (CV, "seq_len"), (MG, "setting")]


def fill(args: List[str], places: Dict[str, str]) -> List[str]:
  return [a.format(**places) for a in args]


def argv_of(binary: str, args: List[str], places: Dict[str, str]) -> List[str]:
  """The command line of a row (without the program name)."""
  return fill(BASE[binary] + list(args), places)


def module_of(binary: str) -> str:
  return "experiments.study.__main__" if binary == ST else binary


def _own_flags(flags, module: str) -> List[str]:
  return [f.name for f in flags.FLAGS.flags_by_module_dict().get(module, [])]


def run_in_process(rows: List[Tuple[str, List[str]]]) -> Dict:
  """Runs ``(binary, argv)`` rows binary by binary in this process (module docstring).
  Returns ``{"results": [{status, stderr, seconds}], "flags": {binary: [names]}}``."""
  from absl import flags
  from experiments import cli
  results, defined, current, mod = [None] * len(rows), {}, None, None
  order = sorted(range(len(rows)), key=lambda i: BINARIES.index(rows[i][0]))
  for i in order:
    binary, argv = rows[i]
    if binary != current:
      if current is not None:
        for name in _own_flags(flags, module_of(current)):
          delattr(flags.FLAGS, name)
      if "compile_cache" in flags.FLAGS:
        delattr(flags.FLAGS, "compile_cache")
      mod = importlib.import_module(module_of(binary))
      cli.define_compile_cache_flag()
      names = set(_own_flags(flags, module_of(binary))) | {"verbose", "compile_cache"}
      defined[binary] = sorted(names)
      current = binary
    flags.FLAGS.unparse_flags()
    for name in [n for n in flags.FLAGS if n.startswith("config.")]:
      delattr(flags.FLAGS, name)        # --config.x.y overrides define a flag each
    err, status, t0 = io.StringIO(), 0, time.time()
    sys.argv = [binary] + argv
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
      try:
        rest = cli._parse(sys.argv)           # pylint: disable=protected-access
        cli._guarded(mod.main)(rest)          # pylint: disable=protected-access
      except SystemExit as e:
        status = e.code if isinstance(e.code, int) else 1
      except BaseException as e:  # pylint: disable=broad-except  (a bug: a traceback)
        import traceback
        err.write("Traceback (most recent call last):\n" + "".join(
            traceback.format_exception(type(e), e, e.__traceback__)))
        status = 1
    results[i] = {"status": status, "stderr": err.getvalue(),
                  "seconds": time.time() - t0}
  return {"results": results, "flags": defined}


if __name__ == "__main__":
  import os
  # This checkout's binaries, not an installed copy (the script's folder is tests/).
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  # stdin: JSON [[binary, [args...]], ...]; stdout: the JSON of run_in_process.
  rows_in = [(b, list(a)) for b, a in json.load(sys.stdin)]
  real_stdout = sys.stdout
  out = run_in_process(rows_in)
  real_stdout.write(json.dumps(out) + "\n")
