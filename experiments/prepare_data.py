r"""Tokenizes a corpus once into memory-mappable token shards plus a manifest.

  python -m experiments.prepare_data --source=SOURCE --tokenizer=TOKENIZER --out=DIR
      [--layout=packed|padded --seq_len=N] [--overwrite]
  python -m experiments.prepare_data --verify --out=DIR

Sources (never downloaded):
  text8:PATH        text8.zip or the extracted file; standard 90M/5M/5M split
  text:PATH         plain text, one document per blank-line-separated paragraph
                    (--doc_sep=line: one per line); .xz/.gz/.bz2 read as such
  jsonl:PATH        JSON lines, the --text_key field of each object
  tfds:NAME         a locally prepared tfds dataset (openwebtext, lm1b) via
                    tfds.data_source (--tfds_dir); OWT holds out its last 100k docs
Text and JSONL take --validation_path=PATH, else the last --validation_fraction of the
documents is the validation split (1.0: everything, for an evaluation-only set).

Tokenizers:
  char                      the 27-symbol text8 alphabet (text cleaned by its rule)
  sentencepiece:PATH.model  an existing model; plain `sentencepiece` trains one on the
                            training documents (--spm_vocab_size) into DIR
  hf:PATH.json              any Hugging Face tokenizers file, e.g. GPT-2's or
                            bert-base-uncased's tokenizer.json (--eos_token/--pad_token
                            override the special tokens found by name)

Train on the result with ``--config.data.name=prepared --config.data.path=DIR`` (and
``--config.data.layout=padded --config.data.seq_len=N`` for a padded set). Every path
may be a bucket URL; training memory-maps local shards (see tcsm_jax/data/prepared.py).
``--verify`` hashes every shard of DIR against the manifest once, so training starts
skip the hash.
"""

import json

from absl import flags, logging

from experiments import cli, common
from tcsm_jax import errors, fs
from tcsm_jax.data import base, prepared, sources, tokenizer

_SOURCE = flags.DEFINE_string("source", None, "text8:PATH, text:PATH, jsonl:PATH or "
                              "tfds:NAME.")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "char, sentencepiece[:PATH] or "
                                 "hf:PATH.json.")
_OUT = flags.DEFINE_string("out", None, "Output directory (local or bucket URL).")
_LAYOUT = flags.DEFINE_enum("layout", "packed", list(base.LAYOUTS),
                            "packed: documents joined by EOS; padded: one document per "
                            "row of --seq_len tokens (LM1B style).")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 0, "Row length of the padded layout.")
_DOC_SEP = flags.DEFINE_enum("doc_sep", "blank", ["blank", "line"],
                             "Documents of a text source: blank-line separated or one "
                             "per line.")
_TEXT_KEY = flags.DEFINE_string("text_key", "text", "Text field of JSONL/tfds records.")
_VAL_FRACTION = flags.DEFINE_float("validation_fraction", 0.05,
                                   "Text/JSONL: last fraction of documents held out.")
_VAL_PATH = flags.DEFINE_string("validation_path", "", "Text/JSONL: a separate "
                                "validation file (same format).")
_TFDS_DIR = flags.DEFINE_string("tfds_dir", "", "tfds data_dir (default "
                                "~/tensorflow_datasets).")
_VAL_DOCS = flags.DEFINE_integer("validation_docs", 100_000, "tfds without a validation "
                                 "split: train documents held out.")
_MAX_TRAIN_DOCS = flags.DEFINE_integer("max_train_docs", 0, "tfds: at most this many "
                                       "train documents (0 = all).")
_SPM_VOCAB = flags.DEFINE_integer("spm_vocab_size", 8192, "Vocabulary of a sentencepiece "
                                  "model trained here.")
_EOS = flags.DEFINE_string("eos_token", None, "hf: end-of-document token name.")
_PAD = flags.DEFINE_string("pad_token", None, "hf: pad token name.")
_MAX_DROPPED = flags.DEFINE_float("max_dropped_fraction", sources.MAX_DROPPED_FRACTION,
                                  "char tokenizer on text: most non-space characters "
                                  "cleaning may drop.")
_BATCH_DOCS = flags.DEFINE_integer("batch_docs", 512, "Documents tokenized at once.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace a prepared --out.")
_VERIFY = flags.DEFINE_bool("verify", False, "Only verify the shards of --out.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.mark_flag_as_required("out")


def build_tokenizer(spec: str, source: sources.Source, out: str) -> tokenizer.Tokenizer:
  if spec in ("sentencepiece", "spm"):
    if "train" not in source.splits:
      raise errors.FlagError("training a sentencepiece model needs a train split")
    path = fs.join(out, "spm_trained.model")
    logging.info("training a %d-piece sentencepiece model on the train documents",
                 _SPM_VOCAB.value)
    tokenizer.SentencePiece.train(source.splits["train"](), _SPM_VOCAB.value, path)
    tok = tokenizer.SentencePiece.from_file(path)
    if tok.vocab_size < _SPM_VOCAB.value:
      # The trainer runs with hard_vocab_limit=false: the size is an upper bound (a
      # unigram vocabulary holds only pieces its text supports), so say what it made.
      print(f"note: --spm_vocab_size={_SPM_VOCAB.value:,} is more pieces than the "
            f"training text supports; sentencepiece made {tok.vocab_size:,} (the size "
            "is an upper bound; use more text, or a size at most this for an exact "
            "vocabulary)", flush=True)
    return tok
  return tokenizer.from_spec(spec, _EOS.value, _PAD.value)


def validate_flags() -> None:
  """``FlagError`` naming the first bad flag, before anything is read or written."""
  check = common.check_flag
  common.require_output_dir(_OUT.value, "out")
  if _VERIFY.value:
    return
  check(bool(_SOURCE.value) and bool(_TOKENIZER.value),
        "--source and --tokenizer are required (or --verify)")
  kind = _SOURCE.value.partition(":")[0]
  check(0 <= _VAL_FRACTION.value <= 1, "--validation_fraction must lie in [0, 1], got "
        f"{_VAL_FRACTION.value}")
  check(0 <= _MAX_DROPPED.value <= 1, "--max_dropped_fraction must lie in [0, 1], got "
        f"{_MAX_DROPPED.value}")
  common.at_least("batch_docs", _BATCH_DOCS.value, 1)
  common.at_least("validation_docs", _VAL_DOCS.value, 0)
  common.at_least("max_train_docs", _MAX_TRAIN_DOCS.value, 0)
  common.at_least("spm_vocab_size", _SPM_VOCAB.value, 2)
  check(bool(_TEXT_KEY.value), "--text_key is empty (the text field of the records)")
  check(not _TFDS_DIR.value or kind == "tfds", "--tfds_dir is only used with "
        f"--source=tfds:NAME, not {_SOURCE.value!r}")
  hf = _TOKENIZER.value.startswith("hf:")
  for flag, value in (("eos_token", _EOS.value), ("pad_token", _PAD.value)):
    check(value is None or hf, f"--{flag} names a token of an hf: tokenizer; "
          f"--tokenizer={_TOKENIZER.value} has its own")
  if _VAL_PATH.value:
    check(kind in ("text", "jsonl"), "--validation_path is only used with text: and "
          "jsonl: sources")
    if not fs.exists(_VAL_PATH.value):
      raise errors.DataError(f"--validation_path {_VAL_PATH.value!r} does not exist")


def main(argv):
  if len(argv) > 1:
    raise errors.FlagError(f"unexpected arguments {argv[1:]}")
  validate_flags()
  out = _OUT.value
  if not out:
    raise errors.FlagError("--out is empty")
  fs.confine(out)                     # nothing written under --out leaves it
  if _VERIFY.value:
    try:
      report = prepared.verify(out, progress=_PROGRESS.value)
    except errors.UserError as e:
      raise type(e)(f"--out: {e}") from None
    print(json.dumps(report, indent=2))
    print(f"{out}: all {len(report)} shards match the manifest")
    return
  if not _SOURCE.value or not _TOKENIZER.value:
    raise errors.FlagError("--source and --tokenizer are required (or --verify)")
  if _LAYOUT.value == "padded" and _SEQ_LEN.value < 1:
    raise errors.FlagError("--layout=padded needs --seq_len (the row length)")
  try:
    src = sources.source_from_spec(
        _SOURCE.value, doc_sep=_DOC_SEP.value, text_key=_TEXT_KEY.value,
        validation_fraction=_VAL_FRACTION.value, validation_path=_VAL_PATH.value,
        tfds_dir=_TFDS_DIR.value, validation_docs=_VAL_DOCS.value,
        max_train_docs=_MAX_TRAIN_DOCS.value)
  except errors.UserError as e:
    raise type(e)(f"--source={_SOURCE.value}: {e}") from None
  if fs.exists(fs.join(out, prepared.MANIFEST)) and not _OVERWRITE.value:
    raise errors.DataError(f"{out!r} already holds a prepared dataset; pass --overwrite "
                           "to replace it")
  try:
    tok = build_tokenizer(_TOKENIZER.value, src, out)
  except errors.UserError as e:
    raise type(e)(f"--tokenizer={_TOKENIZER.value}: {e}") from None
  m = prepared.prepare(out, src, tok, layout=_LAYOUT.value, seq_len=_SEQ_LEN.value,
                       batch_docs=_BATCH_DOCS.value, overwrite=_OVERWRITE.value,
                       progress=_PROGRESS.value, max_dropped=_MAX_DROPPED.value)
  rows = [("out", out), ("source", _SOURCE.value), ("tokenizer", repr(tok)),
          ("vocab_size", m["vocab_size"]), ("dtype", m["dtype"]), ("layout", m["layout"])]
  rows += [(f"{s} tokens", f"{e['num_tokens']:,} ({e['num_documents']:,} documents)")
           for s, e in m["splits"].items()]
  width = max(len(k) for k, _ in rows)
  print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
  flag = "" if m["layout"] == "packed" else (
      f" --config.data.layout=padded --config.data.seq_len={m['seq_len']}")
  print(f"train with: --config.data.name=prepared --config.data.path={out}{flag}")


if __name__ == "__main__":
  cli.run(main)
