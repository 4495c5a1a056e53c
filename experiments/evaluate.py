r"""Evaluates the NLL bound of a trained diffusion model (or the NLL of a causal one).

  python -m experiments.evaluate --workdir=DIR [--config=...] [--num_t=8]
      [--num_batches=0] [--split=validation] [--data=PREPARED_DIR [--name=NAME]]

Prints a table and writes ``DIR/eval_report.json`` (on a read-only or full workdir the
table is printed, then one ``error:`` line says the report was not written, status 2):
nats and bits per token with the
standard error, perplexity, the prior term, step and data.

Zero-shot: ``--data=PREPARED_DIR`` evaluates the checkpoint on a prepared dataset
(``experiments.prepare_data``; e.g. PTB, WikiText, LM1B as MDLM/SEDD report them) with
the sequence layout of the training config (``data.seq_len`` tokens per sequence,
``eval.batch_size`` sequences per batch). Its vocabulary (and tokenizer, where both
record one) must match the model's; ``--split`` picks any split of its manifest (e.g.
``test``). The report goes to ``DIR/eval_<name>.json`` (``name``: ``--name`` or the
directory's base name). Padded sets (one document per row) leave the padding out and
report per real token.
"""

from absl import flags, logging
from ml_collections import config_flags

from experiments import cli, common
from tcsm_jax import fs
from tcsm_jax.training import log_setup

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config (default: the "
                                          "workdir's config.json).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir.")
_NUM_T = flags.DEFINE_integer("num_t", None, "Time samples per sequence (>= 1; "
                              "default: the config's eval.num_t).")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", None, "Batches (>= 0; 0 = the whole "
                                    "split; default: the config's eval.num_batches).")
_SPLIT = flags.DEFINE_string("split", "validation", "Split: validation or train (with "
                             "--data: any split of its manifest, e.g. test).")
_RAW = flags.DEFINE_bool("raw_params", False, "Use raw params instead of EMA.")
_DATA = flags.DEFINE_string("data", "", "Prepared dataset directory to evaluate on "
                            "(zero-shot); default: the training data.")
_NAME = flags.DEFINE_string("name", "", "Report name for --data (eval_<name>.json); "
                            "default: the base name of --data.")
flags.mark_flag_as_required("workdir")


def main(_):
  common.validate_eval_flags(_NUM_T.value, _NUM_BATCHES.value, _DATA.value, _NAME.value,
                             _SPLIT.value)
  workdir = _WORKDIR.value
  common.require_run_dir(workdir, "workdir", config_given=_CONFIG.value is not None)
  if _DATA.value:
    common.require_dir(_DATA.value, "data")
  log_setup.quiet_libraries()
  run = common.load_run(workdir, _CONFIG.value, use_ema=not _RAW.value)
  cfg, exp = run.config, run.experiment
  num_t = common.maybe(_NUM_T.value, cfg.eval.num_t)
  num_batches = common.maybe(_NUM_BATCHES.value, cfg.eval.num_batches)
  if _DATA.value:
    ds = common.load_prepared(_DATA.value, run, _SPLIT.value)
    tokens = ds.validation            # the requested split, whatever its name
    out_name = common.eval_report_name(_DATA.value, _NAME.value)
    what = f"--data {_DATA.value!r} ({_SPLIT.value} split)"
  else:
    ds, out_name = exp.dataset, "eval_report.json"
    tokens = ds.validation if _SPLIT.value == "validation" else ds.train
    what = f"the {_SPLIT.value} split of {exp.dataset.name!r}"
  rep = common.evaluate_tokens(run, tokens, num_t, num_batches, what,
                               getattr(ds, "pad_id", None))
  out = dict(rep, step=run.step, split=_SPLIT.value, dataset=ds.name,
             data_path=_DATA.value or None, process=cfg.process, loss=dict(cfg.loss))
  path = common.write_report_or_warn(fs.join(workdir, out_name), out)
  rows = [("workdir", workdir), ("step", run.step), ("data", ds.name),
          ("split", _SPLIT.value), ("metric", rep["kind"]),
          ("layout", f"{rep['num_sequences']} sequences x {rep['seq_len']} tokens"),
          ("nats/token", f"{rep['nats_per_token']:.4f} +- {rep['stderr']:.4f}"),
          ("bits/token", f"{rep['bits_per_token']:.4f}"),
          ("perplexity", f"{rep['perplexity']:.3f}"),
          ("prior nats/token", f"{rep['prior_per_token']:.5f}"),
          ("report", path or "not written (see the error line)")]
  width = max(len(k) for k, _ in rows)
  print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
  common.finish_reports()      # a read-only or full workdir: one error line, status 2
  logging.info("wrote %s", path)


if __name__ == "__main__":
  cli.run(main)
