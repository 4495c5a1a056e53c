"""The docs' commands are tests: every command of README.md and notebooks/README.md.

``docs_check.py`` extracts the README's fenced blocks whose info string is
``bash runnable`` and runs their commands in order in one scratch directory (train ->
evaluate -> sample chains), each with tiny config overrides; see its docstring for the
rewriting rules. The checker itself is tested on a synthetic README first, so these
tests mean something whatever the README holds.

Every other command of a shell block must be listed in ``COVERAGE`` (exactly as
written, continuations joined, comment dropped) with how it is tested:

* ``Synopsis``: run here after the runnable blocks, in the same scratch directory, as
  ``docs_check.expand_synopsis`` writes it (placeholders ``DIR`` ``JDIR`` ``OUT``
  ``PREPARED_DIR`` ``<name>`` from ``PLACES``, every ``[--optional]`` flag given, the
  first ``a|b|c`` alternative), scaled down only by the docs check's documented
  overrides (steps, sizes, sample counts). The default run narrows comma-list sweeps to
  their first value; the slow test runs the full sweep and every other alternative.
* ``Elsewhere``: the same binary and flags run by the named test (scaled through a
  documented override such as ``--quick``), with the cheaper default test that covers
  it when that one is slow.
* ``Skip``: cannot run on a test machine, with the reason.

A command added to a doc without an entry (or an entry whose command left the docs)
fails ``test_every_documented_command_is_covered``: the coordinator sees it at merge.
"""

import dataclasses
import pathlib
import sys
from typing import Dict

import pytest

import docs_check as dc

SYNTHETIC = r"""
# Title

Plain shell, not runnable:

```bash
python -m experiments.train --config=experiments/configs/kjv_tiny.py --workdir=DIR
```

```bash runnable
pip install -r requirements.txt -e . && python -m experiments.train \
    --config=experiments/configs/kjv_tiny.py --workdir=workdirs/run  # trains
# a comment line
python -m experiments.evaluate --workdir=workdirs/run
python -m experiments.sample --workdir=workdirs/run --prompt="in the beginning"
```

* In a list:

  ~~~bash runnable
  python -m pytest -q
  tensorboard --logdir=workdirs/run/tensorboard
  python -m experiments.train --config=experiments/configs/text8.py --workdir=w8
  ~~~

```python runnable
print("not shell: never run")
```

```bash runnable extra words
XLA_FLAGS=--foo python -m experiments.prepare_data --source=text:tcsm_jax/data/bundled/kjv_text8.txt.xz --out=workdirs/prep && python -m experiments.evaluate --workdir=workdirs/run --data=workdirs/prep
```
"""


def test_extracts_only_shell_blocks_marked_runnable():
  blocks = dc.extract_blocks(SYNTHETIC)
  assert [b.info for b in blocks] == ["bash", "bash runnable", "bash runnable",
                                      "python runnable", "bash runnable extra words"]
  runnable = dc.runnable_blocks(SYNTHETIC)
  assert [b.line for b in runnable] == [10, 20, 30]
  # The indented (list) block is de-indented.
  assert runnable[1].text.splitlines()[0] == "python -m pytest -q"


def test_commands_joined_comments_dropped():
  text = dc.runnable_blocks(SYNTHETIC)[0].text
  cmds = dc.split_commands(text)
  assert len(cmds) == 3
  assert cmds[0].startswith("pip install -r requirements.txt -e . && python -m "
                            "experiments.train")
  assert "--workdir=workdirs/run" in cmds[0] and "\\" not in cmds[0]


def test_rewrites_for_a_tiny_run_in_a_scratch_directory():
  cmds = dc.commands_of(SYNTHETIC)
  train, evaluate, sample = cmds[:3]
  # pip install dropped; python is this interpreter; repository inputs absolute;
  # outputs stay relative (they land in the scratch directory).
  assert train.argv[:3] == [sys.executable, "-m", "experiments.train"]
  assert f"--config={dc.REPO}/experiments/configs/kjv_tiny.py" in train.argv
  assert "--workdir=workdirs/run" in train.argv
  # Tiny overrides come after the README's own flags (the last value wins).
  assert train.argv.index("--config.train.num_steps=3") > train.argv.index(
      "--workdir=workdirs/run")
  assert "--summary_samples=1" in train.argv
  # No --config: no config overrides, only the binary's own small flags.
  assert not any(a.startswith("--config") for a in evaluate.argv)
  assert evaluate.argv[-2:] == ["--num_t=1", "--num_batches=1"]
  assert "--prompt=in the beginning" in sample.argv and "--steps=4" in sample.argv
  assert all(c.skip is None for c in cmds[:3])


def test_skips_what_cannot_run_here():
  cmds = dc.commands_of(SYNTHETIC)
  reasons = [c.skip for c in cmds[3:6]]
  assert "test suite" in reasons[0]
  assert "server" in reasons[1]
  assert "not in the repository" in reasons[2]
  prep, ev = cmds[6:]
  assert prep.skip is None and prep.env == {"XLA_FLAGS": "--foo"}
  assert (f"--source=text:{dc.REPO}/tcsm_jax/data/bundled/kjv_text8.txt.xz"
          in prep.argv)
  assert "--out=workdirs/prep" in prep.argv          # an output: never redirected
  assert ev.needs == ["workdirs/prep"]               # made by the command before
  for line in ("sbatch launch/slurm.sbatch --config=x", "gcloud compute tpus list",
               "python -m experiments.train --config=c.py --workdir=gs://b/w",
               "python -m experiments.prepare_data --source=tfds:lm1b --out=o"):
    assert dc.prepare(line)[0].skip, line


@pytest.mark.parametrize("line", ["python -c 1 | head", "python -c 1 > out.txt",
                                  "python -c 1; python -c 2", "echo $(pwd)"])
def test_unsupported_shell_syntax_is_an_error(line):
  with pytest.raises(ValueError, match="unsupported shell syntax"):
    dc.prepare(line)


def test_runner_chains_in_one_directory_and_reports_failures(tmp_path):
  markdown = "\n".join([
      "```bash runnable",
      "python -c \"open('made_by_first', 'w').write('x')\"",
      "python -c \"assert open('made_by_first').read() == 'x'\"",
      "python -m experiments.evaluate --workdir=w --data=not_there",
      "python -c \"import sys; print('boom'); sys.exit(3)\"",
      "python -c \"print('never reached')\"",
      "```"])
  results = dc.run_commands(dc.commands_of(markdown), tmp_path)
  assert [r.returncode for r in results] == [0, 0, None, 3]
  assert "not_there" in results[2].output
  msg = dc.describe_failure(results[3])
  assert "exit 3" in msg and "boom" in msg and "sys.exit(3)" in msg


def test_readme_runnable_blocks_run(readme_dir):
  _, results = readme_dir           # the runnable blocks, then SETUP (fixture below)
  assert len(results) > len(SETUP), "README.md has no ```bash runnable block"
  _check(results)
  assert any(r.returncode == 0 for r in results[:-len(SETUP)]), (
      "every runnable command was skipped")


# ------------------------------------------------------------- every command covered

DOCS = ("README.md", "notebooks/README.md")
# Synopsis placeholders: the main job's workdir, a tiny judge (SETUP), the prepared set
# of the runnable prepare_data block.
PLACES = {"DIR": "workdirs/kjv_tiny", "JDIR": "workdirs/judge", "OUT": "workdirs/frontier",
          "PREPARED_DIR": "workdirs/kjv_prepared", "<name>": "kjv_tiny"}
SETUP = ["python -m experiments.train --config=experiments/configs/kjv_judge.py "
         "--workdir=workdirs/judge"]


@dataclasses.dataclass
class Synopsis:
  slow_choices: tuple = ()         # extra runs (slow): {flag: alternative index}


@dataclasses.dataclass
class Elsewhere:
  test: str                        # file.py::test_name (the same command)
  how: str


@dataclasses.dataclass
class Skip:
  reason: str


_CLUSTER = "needs a SLURM cluster (the launcher is the same train binary: test_multihost)"
_POD = "needs a TPU pod and gcloud"
_DATA = "needs data not in the repository (runnable prepare/train/evaluate chain: README "
_NB = ("rewrites the committed executed notebooks in the repository; "
       "tests/test_notebooks.py runs the same notebooks")
_STUDY = Elsewhere("test_study.py::test_quick_study_writes_sane_outputs",
                   "--quick --seeds=2 (the README's smoke size), slow; default: the "
                   "experiments.study rows of tests/flag_table.py and test_study's "
                   "runner tests")

_DOWNLOAD = "downloads weights from the Hugging Face hub (nothing downloads in the tests)"
_CONVERTED = Elsewhere(
    "test_pretrained.py::test_binaries_on_converted_workdir", "convert a random-weight "
    "MDLM in MDLM's layout, then every sampler, evaluate --data, finetune (reward, "
    "preference), distill with init_from and frontier on it, as binaries (slow); "
    "default: test_pretrained.py::test_convert_binary_one_line_error and "
    "::test_converted_mdlm_restores")
_CONVERTED_GPT2 = Elsewhere(
    "test_pretrained.py::test_gpt2_teacher_and_judge_on_a_converted_mdlm",
    "a converted MDLM over the fixture GPT-2's tokenizer: distill --teacher=hf: with "
    "init_from, sample --judge=hf: --gen_ppl_convention=mdlm (slow); default: "
    "test_gpt2_teacher.py and test_gen_ppl.py")
COVERAGE: Dict[str, object] = {
    # README.md
    "pip install -r requirements.txt -e . && python -m pytest -q":
        Skip("the test suite itself (CI runs it)"),
    "python -m experiments.train --config=experiments/configs/<name>.py --workdir=DIR "
    "[--config.x.y=v ...]": Synopsis(),
    "python -m experiments.prepare_data --source=text:tcsm_jax/data/bundled/"
    "kjv_text8.txt.xz --tokenizer=sentencepiece --spm_vocab_size=64 --out=/tmp/kjv_spm":
        Elsewhere("test_reliability.py::test_prepare_data_sentencepiece_on_the_bundled_"
                  "corpus", "the same flags (slow, ~15 s); default: test_reliability.py"
                  "::test_sentencepiece_trains_on_a_one_line_corpus"),
    "python -m experiments.evaluate --workdir=DIR [--num_t=8] [--num_batches=0] "
    "[--data=PREPARED_DIR]": Synopsis(),
    "python -m experiments.sample --workdir=DIR --num_samples=16 --steps=128 "
    "[--sampler=analytic|ancestral|euler|remdm|first_hitting] [--draw=exact|gumbel32] "
    "[--temperature=1] [--top_p=1] [--remask_schedule=cap|rescale|loop "
    "--remask_eta=0.05] [--prompt=\"in the beginning\"] [--suffix=\"amen\"] "
    "[--template=\"and god said ____ light\"] [--length=512 --overlap=16] "
    "[--guide=token|classifier --guide_gamma=2] [--clean_prompt] [--judge_workdir=JDIR]":
        Synopsis(slow_choices=(
            {"sampler": 1}, {"sampler": 2}, {"sampler": 3}, {"sampler": 4},
            {"draw": 1}, {"sampler": 3, "remask_schedule": 1},
            {"sampler": 3, "remask_schedule": 2}, {"guide": 1})),
    "python -m experiments.frontier --workdir=DIR --judge_workdir=JDIR --outdir=OUT "
    "[--samplers=analytic,remdm,first_hitting] [--steps=16,64,256] "
    "[--temperatures=0.9,1.0] [--top_ps=0.9,1.0] [--draws=exact]": Synopsis(),
    "python -m experiments.prepare_data --source=text8:/data/text8.zip --tokenizer=char "
    "--out=/data/text8_prep": Skip(_DATA + "'A small prepared set from a text file')"),
    "python -m experiments.train --config=experiments/configs/text8.py "
    "--workdir=/runs/text8 --config.data.path=/data/text8_prep":
        Skip(_DATA + "'A small prepared set from a text file')"),
    "python -m experiments.evaluate --workdir=/runs/text8":
        Skip("evaluates the text8 run above (needs its data)"),
    "python -m experiments.prepare_data --source=tfds:openwebtext --tfds_dir=/data/tfds "
    "--tokenizer=hf:/data/gpt2/tokenizer.json --out=/data/owt_gpt2":
        Skip("needs OpenWebText prepared by tfds and GPT-2's tokenizer.json (downloads)"),
    "python -m experiments.train --config=experiments/configs/owt.py "
    "--workdir=gs://BUCKET/owt --config.data.path=/data/owt_gpt2":
        Skip("needs a bucket and OpenWebText"),
    "python -m experiments.evaluate --workdir=gs://BUCKET/owt "
    "--data=/data/wikitext103_gpt2": Skip("needs a bucket and WikiText-103"),
    "launch/local.sh 2 2 -- --config=experiments/configs/kjv_tiny.py "
    "--workdir=workdirs/mp":
        Elsewhere("test_multihost.py::test_two_processes_match_one_and_their_checkpoint_"
                  "restores_in_one", "launch/local.sh 2 2 -- with kjv_tiny at tiny sizes "
                  "(slow); default: test_workdir_safety.py's 8 -> 1 device restore"),
    "sbatch --nodes=4 launch/slurm.sbatch --config=experiments/configs/owt.py "
    "--workdir=/shared/owt --config.data.path=/shared/owt_gpt2": Skip(_CLUSTER),
    "launch/tpu_pod.sh create tcsm us-central2-b v4-32": Skip(_POD),
    "launch/tpu_pod.sh install tcsm us-central2-b": Skip(_POD),
    "launch/tpu_pod.sh run tcsm us-central2-b --config=experiments/configs/text8.py "
    "--workdir=gs://BUCKET/text8 --config.data.path=/data/text8_prep": Skip(_POD),
    "launch/tpu_pod.sh delete tcsm us-central2-b": Skip(_POD),
    **{f"python -m experiments.study --study={s} --outdir=studies/{s}": _STUDY
       for s in ("objectives", "teacher", "distill", "reward", "reward_bias", "ratio",
                 "hamming")},
    # README.md, Few network calls
    "python -m experiments.sample --workdir=DIR --sampler=confidence --unmask_per_call=4":
        Synopsis(),
    "python -m experiments.sample --workdir=DIR --sampler=entropy_bound --eb_gamma=0.1":
        Synopsis(),
    "python -m experiments.sample --workdir=DIR --sampler=confidence_threshold "
    "--confidence_tau=0.9": Synopsis(),
    "python -m experiments.distill --self --teacher_workdir=DIR --workdir=SD --rounds=4 "
    "--teacher_steps=256 [--round_train_steps=N]":
        Elsewhere("test_few_steps.py::test_self_distillation_binary_rounds_resume_and_"
                  "sample", "--self with 2 rounds at tiny sizes, resumed, then sampled "
                  "(slow); default: the distill rows of tests/flag_table.py and "
                  "test_self_distill.py (the exact law)"),
    "python -m experiments.frontier --workdir=DIR --judge_workdir=JDIR --outdir=OUT "
    "--nfe=4,8,16,32,64 --samplers=analytic,confidence,first_hitting,entropy_bound":
        Synopsis(),
    "python -m experiments.study --study=few_steps --outdir=studies/few_steps":
        Elsewhere("test_few_steps.py::test_few_steps_study_quick", "--quick (slow); "
                  "default: the experiments.study rows of tests/flag_table.py"),
    # README.md, Pre-trained models (GPT-2 large is not in the repository)
    "python -m experiments.sample --workdir=DIR --num_samples=64 --steps=1000 "
    "--judge=hf:/data/gpt2-large --gen_ppl_convention=mdlm":
        Elsewhere("test_end_to_end.py::test_binaries_train_evaluate_sample_and_refuse_"
                  "empty_workdirs", "sample and frontier with --judge=hf: the committed "
                  "tiny GPT-2 (tests/fixtures/gpt2_tiny) in place of gpt2-large (slow); "
                  "default: test_gen_ppl.py (every convention against brute force)"),
    "python -m experiments.judge --judge=hf:/data/gpt2-large --text_file=samples.txt "
    "[--separator=line|blank] [--gen_ppl_convention=auto|project|mdlm|duo|remdm|sedd]":
        Elsewhere("test_judge_binary.py::test_scores_text_as_the_library_does",
                  "the committed tiny GPT-2 in place of gpt2-large, line and blank "
                  "separators, mdlm and sedd conventions"),
    "python -m experiments.distill --config=experiments/configs/owt.py --workdir=W "
    "--config.data.path=/data/owt_gpt2 --teacher=hf:/data/gpt2-large --mode=top_k_tail":
        Elsewhere("test_end_to_end.py::test_distill_from_an_hf_gpt2_teacher",
                  "--teacher=hf: the committed tiny GPT-2 on data prepared with its "
                  "tokenizer (OpenWebText and gpt2-large need downloads; slow); default: "
                  "test_gpt2_teacher.py (targets against enumeration)"),
    # README.md, Diffusion LMs and Reproducing a peer's number (real weights and data
    # are downloads; the same binaries run on committed random-weight peer fixtures)
    **{c: _CONVERTED for c in (
        "python -m experiments.convert --from=mdlm:/data/mdlm-owt --workdir=/runs/mdlm-owt "
        "--tokenizer=/data/gpt2/tokenizer.json [--data=/data/owt_gpt2] [--seq_len=1024]",
        "python -m experiments.convert --from=mdlm:/data/mdlm-owt --workdir=/runs/mdlm-owt "
        "--tokenizer=/data/gpt2/tokenizer.json --data=/data/owt_gpt2",
        "python -m experiments.evaluate --workdir=/runs/mdlm-owt "
        "--data=/data/wikitext103_gpt2",
        "python -m experiments.evaluate --workdir=/runs/mdlm-owt --data=/data/ptb_gpt2 "
        "--split=test",
        "python -m experiments.sample --workdir=/runs/mdlm-owt --num_samples=8 --steps=1000 "
        "--sampler=ancestral",
        "python -m experiments.finetune --config=experiments/configs/pretrained.py:"
        "/runs/mdlm-owt --workdir=/runs/mdlm-reward --config.data.path=/data/owt_gpt2 "
        "--config.finetune.kind=reward --config.finetune.ref_workdir=/runs/mdlm-owt ...")},
    **{c: _CONVERTED_GPT2 for c in (
        "python -m experiments.distill --config=experiments/configs/pretrained.py:"
        "/runs/mdlm-owt --workdir=/runs/mdlm-distill --teacher=hf:/data/gpt2-large "
        "--config.data.path=/data/owt_gpt2 --config.train.init_from=/runs/mdlm-owt",
        "python -m experiments.sample --workdir=/runs/mdlm-owt --num_samples=512 "
        "--steps=1000 --sampler=ancestral --judge=hf:/data/gpt2-large "
        "--gen_ppl_convention=mdlm")},
    "pip install -e .[parity] && python -m pytest -n 0 tests/test_diffusion_parity.py":
        Skip("installs torch and transformers (the parity extra); the default suite "
             "checks the same imports against committed fixtures (test_pretrained.py)"),
    "python tests/fixtures/make_peer_fixtures.py":
        Skip("rewrites the committed fixtures; needs torch and the peers' repositories"),
    "huggingface-cli download kuleshov-group/mdlm-owt --local-dir /data/mdlm-owt":
        Skip(_DOWNLOAD),
    "huggingface-cli download gpt2 tokenizer.json --local-dir /data/gpt2": Skip(_DOWNLOAD),
    "huggingface-cli download gpt2-large --local-dir /data/gpt2-large": Skip(_DOWNLOAD),
    # README.md, TPU pods (libtpu is the optional extra, about 700 MB)
    "pip install -e '.[tpu]'": Skip("installs libtpu (about 700 MB) from the registry; "
                                    "the TPU-compile tests skip without it, saying why"),
    "python -m experiments.benchmarks.scale_plan --target=tpu:v5p:2x2x1 --sizes=7b "
    "--mesh=fsdp --remat=nothing_saveable --batches=1,4 --extrapolate_to=v5p:4x4x8":
        Elsewhere("test_scale_plan.py::test_tpu_plan_compiles_the_tiny_model_for_a_v5e_"
                  "slice", "--target=tpu: at the tiny size for v5e:2x2 where libtpu is "
                  "installed (slow; a 7B compile takes minutes); default: test_scale_plan.py"
                  "::test_tpu_target_without_libtpu_is_one_error_line"),
    "python -m experiments.benchmarks.tpu_sample_plan --target=tpu:v5e:2x2 "
    "--size=gpt2_small":
        Elsewhere("test_tpu_sample_plan.py::test_sampler_compiled_for_v5e_is_one_device_"
                  "loop", "the same binary for v5e:2x2 at a tiny size where libtpu is "
                  "installed (slow); default: test_tpu_sample_plan.py::test_while_loops_"
                  "and_host_ops_of_a_tpu_style_program"),
    # notebooks/README.md
    "jupyter lab notebooks/": Skip("starts a server"),
    "jupytext --to notebook --execute notebooks/01_concrete_scores.py": Skip(
        "writes notebooks/01_concrete_scores.ipynb over the committed executed copy; "
        "tests/test_notebooks.py::test_notebook_quick executes the same notebook"),
    "cd notebooks && MPLBACKEND=Agg python 01_concrete_scores.py": Synopsis(),
    "python notebooks/build.py": Skip(_NB),
    "python notebooks/build.py 02": Skip(_NB),
}
# Synopses that take more than a few seconds: slow, with the cheaper default run named.
SLOW_SYNOPSES = {
    **{c: "default: test_adaptive.py (each sampler's law on an enumerable space) and the "
          "experiments.sample rows of tests/flag_table.py for its flags" for c in (
        "python -m experiments.sample --workdir=DIR --sampler=confidence "
        "--unmask_per_call=4",
        "python -m experiments.sample --workdir=DIR --sampler=entropy_bound --eb_gamma=0.1",
        "python -m experiments.sample --workdir=DIR --sampler=confidence_threshold "
        "--confidence_tau=0.9")},
    "python -m experiments.frontier --workdir=DIR --judge_workdir=JDIR --outdir=OUT "
    "--nfe=4,8,16,32,64 --samplers=analytic,confidence,first_hitting,entropy_bound":
        "default: test_few_steps.py::test_settings_make_the_calls_they_name and the "
        "README's frontier synopsis",
    "cd notebooks && MPLBACKEND=Agg python 01_concrete_scores.py":
        "TCSM_NB_QUICK=1 (documented); default: test_notebooks.py::test_executed_"
        "notebook_matches_its_source",
}
SYNOPSIS_ENV = {"cd notebooks && MPLBACKEND=Agg python 01_concrete_scores.py":
                {"TCSM_NB_QUICK": "1"}}


def _written():
  return [(doc, w) for doc in DOCS
          for w in dc.written_commands((dc.REPO / doc).read_text())]


def test_every_documented_command_is_covered():
  """Each command of a shell block is in a runnable block or in COVERAGE; each
  COVERAGE entry is still in the docs; each named test exists."""
  written = _written()
  unlisted = [f"{doc}:{w.line}: {w.command}" for doc, w in written
              if not w.runnable and w.command not in COVERAGE]
  assert not unlisted, ("documented commands no test runs; run them (a `bash "
                        "runnable` block) or list them in tests/test_readme.py "
                        "COVERAGE:\n" + "\n".join(unlisted))
  commands = {w.command for _, w in written}
  stale = [c for c in COVERAGE if c not in commands]
  assert not stale, f"COVERAGE entries no doc holds any more: {stale}"
  for c, how in COVERAGE.items():
    if isinstance(how, Elsewhere):
      path, _, name = how.test.partition("::")
      assert f"def {name}(" in (dc.REPO / "tests" / path).read_text(), how.test
    if isinstance(how, Skip):
      assert how.reason
  assert set(SLOW_SYNOPSES) <= {c for c, h in COVERAGE.items() if isinstance(h, Synopsis)}


def _synopsis_commands(slow: bool):
  """``(label, [Command])`` of the synopses: the default (narrowed) runs, or (slow)
  the full sweeps, the other alternatives and the slow synopses."""
  out = []
  for command, how in COVERAGE.items():
    if not isinstance(how, Synopsis):
      continue
    env = SYNOPSIS_ENV.get(command, {})
    runs = []
    if command in SLOW_SYNOPSES:
      runs = [({}, False)] if slow else []
    elif slow:
      runs = [({}, False)] * ("," in command) + [(c, False) for c in how.slow_choices]
    else:
      runs = [({}, True)]
    for choose, narrow in runs:
      text = dc.expand_synopsis(command, PLACES, choose, narrow)
      cmds = dc.prepare(text)
      for c in cmds:
        c.env.update(env)
      out.append((text, cmds))
  return out


@pytest.fixture(scope="module")
def readme_dir(tmp_path_factory):
  """The runnable blocks of README.md run in one scratch directory, then SETUP."""
  tmp = tmp_path_factory.mktemp("readme")
  commands = dc.commands_of((dc.REPO / "README.md").read_text())
  commands += [c for line in SETUP for c in dc.prepare(line)]
  return tmp, dc.run_commands(commands, tmp)


def _check(results):
  for r in results:
    status = "skipped: " + r.output if r.returncode is None else f"exit {r.returncode}"
    print(f"{r.seconds:5.1f} s  {r.command.source}  [{status}]")
  failed = [r for r in results if r.returncode not in (0, None)]
  assert not failed, dc.describe_failure(failed[0])


def test_readme_synopsis_commands_run(readme_dir):
  """Each synopsis as a command (every optional flag, first alternative, sweeps cut to
  one setting) on the workdirs the runnable blocks and SETUP made."""
  tmp, setup = readme_dir
  _check(setup)
  runs = _synopsis_commands(slow=False)
  assert runs
  for text, cmds in runs:
    results = dc.run_commands(cmds, tmp)
    assert [r.returncode for r in results] == [0] * len(cmds), dc.describe_failure(
        next(r for r in results if r.returncode != 0))
  # The sample synopsis ran with --length=512 past the judge's data.seq_len 64.
  assert list((tmp / "workdirs/kjv_tiny/samples").glob("analytic_4steps_*.txt"))
  assert (tmp / "workdirs/frontier/frontier.csv").exists()


@pytest.mark.slow
def test_readme_synopsis_alternatives_run(readme_dir):
  """The full sweeps, every other ``a|b|c`` alternative and the slow synopses (default:
  test_readme_synopsis_commands_run, the same binaries and flags)."""
  tmp, setup = readme_dir
  _check(setup)
  for text, cmds in _synopsis_commands(slow=True):
    results = dc.run_commands(cmds, tmp, timeout=900)
    bad = [r for r in results if r.returncode not in (0, None)]
    assert not bad, dc.describe_failure(bad[0])
