r"""Scores any text under any judge: generative perplexity with its convention.

  python -m experiments.judge --judge=JDIR|hf:DIR --text_file=F \
      [--gen_ppl_convention=auto|project|mdlm|duo|remdm|sedd] [--separator=line|blank] \
      [--max_length=0] [--ppl_batch_size=0] [--group_size=0] [--dtype=float32]

``--judge``: a causal model's training workdir (its own tokenizer) or ``hf:DIR`` (a
Hugging Face GPT-2 directory; a hub id is fetched only if asked for and reachable).
``--text_file``: UTF-8 text; ``--separator=line`` (default) reads one sample per
non-empty line, ``blank`` one sample per block of lines separated by blank lines (the
newlines inside a block are kept). Each sample is encoded with the judge's tokenizer
and scored in the judge's window under the convention (``tcsm_jax/gen_ppl.py``;
``auto``: ``project`` for a workdir judge, ``mdlm`` for ``hf:``). ``--max_length``:
the mdlm/duo/remdm truncation (0 = the judge's window), ``--ppl_batch_size``: rows per
judge batch in the peer's loop (0 = the peer's), ``--group_size``: mdlm/duo samples per
tokenizer call (0 = all). Prints the perplexity, the tokens scored, the convention and
the judge-token unigram entropy; ``--json=PATH`` also writes them.
"""

import json

from absl import flags

from experiments import cli, common
from tcsm_jax import errors, fs, gen_ppl

_JUDGE, _CONV = common.define_judge_flags(" (required; --judge_workdir: alias).")
_TEXT = flags.DEFINE_string("text_file", None, "Text to score (local path or bucket URL).")
_SEP = flags.DEFINE_enum("separator", "line", ["line", "blank"],
                         "line: one sample per non-empty line; blank: samples are "
                         "blocks separated by blank lines.")
_MAXLEN = flags.DEFINE_integer("max_length", 0, "mdlm/duo/remdm truncation in judge "
                               "tokens (0 = the judge's window; >= 0).")
_PBS = flags.DEFINE_integer("ppl_batch_size", 0, "Rows per judge batch in the peer's "
                            "loop (0 = the convention's peer default; >= 0).")
_GROUP = flags.DEFINE_integer("group_size", 0, "mdlm/duo: samples per tokenizer call "
                              "(0 = all at once; >= 0).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                           "hf judge compute dtype.")
_JSON = flags.DEFINE_string("json", "", "Also write the result as JSON here.")


def read_samples(path: str, separator: str):
  """The samples of ``path``: non-empty lines, or blank-line separated blocks."""
  if not fs.exists(path):
    raise errors.FlagError(f"--text_file {path!r} does not exist")
  if fs.isdir(path):
    raise errors.FlagError(f"--text_file {path!r} is a directory, not a text file")
  try:
    text = fs.read_bytes(path).decode("utf-8")
  except UnicodeDecodeError as e:
    raise errors.FlagError(f"--text_file {path!r} is not UTF-8 text ({e})") from None
  lines = text.splitlines()
  if separator == "line":
    samples = [l for l in lines if l.strip()]
  else:
    samples, block = [], []
    for l in lines + [""]:
      if l.strip():
        block.append(l)
      elif block:
        samples.append("\n".join(block))
        block = []
  if not samples:
    raise errors.FlagError(f"--text_file {path!r} holds no sample (separator "
                           f"{separator!r})")
  return samples


def main(_):
  common.check_flag(bool(_JUDGE.value), "--judge is required (a causal workdir or "
                    "hf:DIR)")
  common.check_flag(bool(_TEXT.value), "--text_file is required")
  for name, flag in (("max_length", _MAXLEN), ("ppl_batch_size", _PBS),
                     ("group_size", _GROUP)):
    common.at_least(name, flag.value, 0)
  samples = read_samples(_TEXT.value, _SEP.value)
  common.check_judge_spec(_JUDGE.value)
  judge = common.load_judge(_JUDGE.value, None, _CONV.value, dtype=_DTYPE.value)
  try:
    out = judge.score_texts(samples, max_length=_MAXLEN.value,
                            ppl_batch_size=_PBS.value, group_size=_GROUP.value)
  except ValueError as e:          # no tokenizer / EOS for the convention, short rows
    raise errors.FlagError(str(e)) from None
  conv = out["gen_ppl_convention"]
  out.update(text_file=_TEXT.value, separator=_SEP.value, num_samples=len(samples),
             judge_context=judge.context, judge_kind=judge.kind)
  print(f"judge              {judge.name} ({judge.kind}, window {judge.context} tokens)")
  print(f"convention         {conv}: {gen_ppl.CONVENTIONS[conv]}")
  print(f"samples            {len(samples)} ({_SEP.value}-separated), "
        f"{out['gen_ppl_sequences']} scored")
  print(f"tokens scored      {out['gen_ppl_tokens']}")
  print(f"perplexity         {out['gen_perplexity']:.4f}")
  print(f"NLL per token      {out['gen_ppl_nll']:.4f} nats")
  print(f"unigram entropy    {out['judge_unigram_entropy']:.4f} nats (judge tokens)")
  if _JSON.value:
    common.write_json(_JSON.value, out)


if __name__ == "__main__":
  cli.run(main)
