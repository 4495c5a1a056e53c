r"""Converts a pre-trained MDLM, SEDD or DUO checkpoint into an ordinary workdir.

  python -m experiments.convert --from=mdlm:DIR --workdir=W \
      [--tokenizer=GPT2_DIR/tokenizer.json] [--data=PREPARED_DIR] [--seq_len=N]

``--from=KIND:DIR``: ``mdlm`` (``kuleshov-group/mdlm-owt``), ``sedd``
(``louaaron/sedd-small``, ``-medium``) or ``duo`` (``s-sahoo/duo-*``), a local directory
as ``huggingface-cli download`` leaves it (``config.json`` and the weights). Nothing is
downloaded. ``--tokenizer``: the tokenizer JSON the model was trained with (GPT-2's for
all three; default ``DIR/tokenizer.json``). ``--data``: a prepared dataset with that
tokenizer, recorded as the run's data (default none: the workdir holds the tokenizer,
samples, and evaluates with ``--data``). ``--seq_len``: ``data.seq_len`` (default the
peer's model length, 1024).

Then every binary works on ``W`` as on a trained run: ``evaluate --data=...``,
``sample`` (every sampler of its process), fine-tuning with
``--config.finetune.ref_workdir=W``, ``frontier``. What the workdir holds and how the
peer's parameterization maps to this project's denoiser: ``tcsm_jax/training/imports.py``
and ``tcsm_jax/models/dit.py``. Bad input (a missing directory, a wrong format, an
unknown key, a tokenizer of another vocabulary, a non-empty workdir) is one ``error:``
line and status 2.
"""

from absl import flags

from experiments import cli, common
from tcsm_jax.models import peers
from tcsm_jax.training import imports, log_setup

_FROM = flags.DEFINE_string("from", None, "KIND:DIR with KIND one of mdlm, sedd, duo.")
_WORKDIR = flags.DEFINE_string("workdir", None, "New (or empty) workdir to write.")
_TOKENIZER = flags.DEFINE_string("tokenizer", "", "Tokenizer JSON (default "
                                 "DIR/tokenizer.json).")
_DATA = flags.DEFINE_string("data", "", "Prepared dataset made with that tokenizer "
                            "(optional).")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 0, "data.seq_len (0 = the model's length).")
flags.mark_flags_as_required(["from", "workdir"])


def parse_from(spec: str):
  """``KIND:DIR`` -> ``(kind, dir)``; a ``FlagError`` naming the problem otherwise."""
  kind, sep, directory = spec.partition(":")
  common.check_flag(bool(sep) and kind in peers.KINDS and bool(directory),
                    f"--from must be KIND:DIR with KIND one of {', '.join(peers.KINDS)}, "
                    f"got {spec!r}")
  common.require_dir(directory, "from")
  return kind, directory


def main(_):
  kind, directory = parse_from(_FROM.value)
  common.at_least("seq_len", _SEQ_LEN.value, 0)
  common.require_output_dir(_WORKDIR.value, "workdir")
  if _TOKENIZER.value:
    common.check_flag(not _TOKENIZER.value.endswith("/"), "--tokenizer names the JSON "
                      f"file, got the directory {_TOKENIZER.value!r}")
  if _DATA.value:
    common.require_dir(_DATA.value, "data")
  log_setup.quiet_libraries()
  rec = imports.convert(kind, directory, _WORKDIR.value, _TOKENIZER.value, _DATA.value,
                        _SEQ_LEN.value)
  m = rec["model"]
  files = ", ".join(f"{k} sha256 {v['sha256'][:12]}" for k, v in rec["files"].items())
  print(f"converted {kind} {directory} -> {_WORKDIR.value}\n"
        f"  DiT {m['num_layers']} x {m['width']} ({m['num_heads']} heads, cond "
        f"{m['cond_width']}), {rec['process']} process over {rec['vocab_size']} tokens, "
        f"schedule {rec['schedule']}, time_conditioning {m['time_conditioning']}\n"
        f"  read {files}\n"
        f"next:\n"
        f"  python -m experiments.sample   --workdir={_WORKDIR.value} --num_samples=4 "
        f"--steps=128\n"
        f"  python -m experiments.evaluate --workdir={_WORKDIR.value} --data=PREPARED_DIR")


if __name__ == "__main__":
  cli.run(main)
