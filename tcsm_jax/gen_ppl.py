"""Generative perplexity as each peer computes it, under any causal judge.

A *judge* is a causal LM with its own tokenizer and context window (``Judge``). Samples
are decoded to text with the sampling model's tokenizer, re-encoded with the judge's,
and scored in windows of the judge's context; next to the number go the tokens scored,
the convention's name, and the unigram entropy over the judge's tokens (and, as before,
over the model's own tokens).

Conventions (``CONVENTIONS``; ``--gen_ppl_convention=``), each reproducing a peer's
evaluation code (README, "Pre-trained models", says what each computes and where):

* ``project``: BOS prepended (the judge's BOS: ``<|endoftext|>`` for GPT-2, the BOS
  row of a project-trained causal judge), every token scored, rows longer than the
  window split into consecutive windows that each restart at BOS; ``exp`` of the token
  mean pooled over all samples. With a project judge on the model's own ids this is the
  number ``quality.report`` always gave.
* ``mdlm`` (``kuleshov-group/mdlm`` ``diffusion.py`` ``compute_generative_perplexity``):
  per group of samples (MDLM: one sampling batch), the texts are encoded, truncated to
  ``max_length`` tokens (MDLM: ``model.length``) and right-padded with EOS to the
  group's longest; rows are evaluated ``ppl_batch_size`` at a time (8; the
  ``len % 8`` remainder rows are dropped) in chunks of the judge's context
  (``torch.split``); no BOS, so the first token of every chunk is not scored; a target
  token counts when it is not EOS or is the chunk's first EOS (the mask
  ``first_eos | token != eos``: a padded row pays for predicting one EOS after its
  text, and text after a real EOS is still scored); ``exp`` of the pooled token mean.
* ``duo`` (``s-sahoo/duo`` ``metrics.py``): the same arithmetic (its own ``NLL.update``
  sums ``nll * mask`` where MDLM's torchmetrics ``MeanMetric`` did the multiplication;
  same masks, same chunks, same dropped remainder), called per sampling batch with
  ``max_length = model.length``; DUO reports next to it the mean per-sample entropy of
  the model's own tokens. Kept as its own name so a report says which code it matches.
* ``remdm`` (``kuleshov-group/remdm`` ``main.py`` + ``diffusion.py``): MDLM's function,
  called once on all samples (padding to the longest of *all* samples) with
  ``perplexity_batch_size = 1`` (its scripts), so no sample is dropped.
* ``sedd`` (``louaaron/Score-Entropy-Discrete-Diffusion`` ``run_train.py``): the model's
  own ids, not retokenized (SEDD samples GPT-2 ids and feeds them to GPT-2 large), no
  BOS, the first token not scored, EOS scored like any token; per sequence ``exp`` of
  the mean NLL, then the mean over sequences (batches of 32, remainder dropped). With a
  judge whose tokenizer differs from the model's the text is retokenized and each
  sequence truncated to the judge's window (SEDD's code cannot do this; said in the
  report as ``retokenized``).

Everything here is NumPy around one jitted judge call (``Judge.nll``); nothing depends
on where the judge came from (``posttrain/judges.py`` builds them).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

CONVENTIONS = {
    "project": "BOS prepended, every token scored, exp of the pooled token mean",
    "mdlm": "MDLM: retokenize, truncate, EOS-pad, context chunks, no BOS, first-EOS mask, "
            "pooled token mean, len % 8 rows dropped",
    "duo": "DUO: MDLM's arithmetic (same masks and chunks), entropy of the model's tokens",
    "remdm": "ReMDM: MDLM's function on all samples at once, batch 1",
    "sedd": "SEDD: model ids as sampled, no BOS, EOS scored, mean over sequences of exp "
            "(per-sequence mean NLL)",
}
# What each convention's peer used by default.
PEER_DEFAULTS = {"mdlm": {"ppl_batch_size": 8}, "duo": {"ppl_batch_size": 8},
                 "remdm": {"ppl_batch_size": 1}, "sedd": {"ppl_batch_size": 32}}

NllFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclasses.dataclass
class Judge:
  """A causal judge.

  Attributes:
    name: the spec it was loaded from (a workdir or ``hf:DIR``).
    nll: ``(inputs [n, T], targets [n, T]) -> [n, T]`` float64 ``-log p(targets[:, t] |
      inputs[:, :t + 1])``; ``T <= context``.
    context: the window (GPT-2: ``n_positions``; a project judge: its ``data.seq_len``).
    vocab_size, bos_id, eos_id: the judge's ids (``eos_id`` None without one).
    tokenizer: the judge's tokenizer (``encode``/``decode``/``sha256``), or None when the
      judge reads the sampling model's ids as they are.
    default_convention: used when none is asked for (``project`` for project judges,
      ``mdlm`` for Hugging Face ones).
  """

  name: str
  nll: NllFn
  context: int
  vocab_size: int
  bos_id: int
  eos_id: Optional[int]
  tokenizer: Any = None
  default_convention: str = "project"
  kind: str = "workdir"
  info: Dict[str, Any] = dataclasses.field(default_factory=dict)   # provenance (step)
  defaults: Dict[str, Any] = dataclasses.field(default_factory=dict)

  def bind(self, **defaults) -> "Judge":
    """This judge with default ``score`` arguments (the sampling model's ``decode``,
    ``model_tokenizer_sha``, the ``convention``, ...): what the binaries pass around,
    so that ``quality.report(samples, judge)`` needs nothing else."""
    return dataclasses.replace(self, defaults={**self.defaults, **defaults})

  def score(self, samples, **kw) -> Dict[str, Any]:
    """``_score`` with the bound defaults; arguments given as None, '' or 0 fall back to
    them."""
    return self._score(samples, **self._merged(kw))

  def _merged(self, kw: Dict[str, Any]) -> Dict[str, Any]:
    given = {k: v for k, v in kw.items() if v is not None and not (
        isinstance(v, (str, int)) and not isinstance(v, bool) and not v)}
    return {**self.defaults, **given}

  def score_texts(self, texts: Sequence[str], **kw) -> Dict[str, Any]:
    """Generative perplexity of ``texts`` (encoded with the judge's tokenizer; every
    convention then retokenizes, and ``max_length`` defaults to the judge's window)."""
    if self.tokenizer is None:
      raise ValueError(f"judge {self.name!r} has no tokenizer: it cannot read text")
    kw = {k: v for k, v in self._merged(kw).items()
          if k not in ("decode", "model_tokenizer_sha")}
    return self._score(None, texts=list(texts), **kw)

  def _score(self, samples, decode: Optional[Callable] = None, convention: str = "",
             model_tokenizer_sha: Optional[str] = None, group_size: int = 0,
             max_length: int = 0, ppl_batch_size: int = 0,
             texts: Optional[List[str]] = None) -> Dict[str, Any]:
    """Generative perplexity of ``samples`` (``[n, L]`` model ids) under this judge.

    Args:
      decode: the sampling model's ``ids [n, L] -> list of str``; needed whenever the
        judge has a tokenizer of its own (retokenization).
      convention: a ``CONVENTIONS`` name ('' = ``default_convention``).
      model_tokenizer_sha: the model tokenizer's sha256; equal to the judge's means the
        ids are already the judge's (``sedd`` and ``project`` then skip retokenizing).
      group_size: ``mdlm``/``duo``: samples per retokenization group (the peer's
        sampling batch; 0 = all at once).
      max_length: ``mdlm``/``duo``/``remdm`` truncation (0 = the samples' length L,
        as the peers pass ``model.length``).
      ppl_batch_size: rows per judge batch in the peer's loop (0 = the peer's default).
    Returns:
      ``gen_perplexity``, ``gen_ppl_tokens`` (tokens scored), ``gen_ppl_sequences``,
      ``gen_ppl_convention``, ``gen_ppl_judge``, ``judge_unigram_entropy`` and
      ``gen_ppl_retokenized``.
    """
    conv = convention or self.default_convention
    if conv not in CONVENTIONS:
      raise ValueError(f"unknown generative perplexity convention {conv!r}; choose one "
                       f"of {sorted(CONVENTIONS)}")
    if texts is not None:                            # text given: always encoded
      retok = True
      samples = np.zeros((len(texts), max_length or self.context), np.int64)
    else:
      samples = np.asarray(samples)
      same = (self.tokenizer is None or (model_tokenizer_sha is not None and
                                         model_tokenizer_sha == self.tokenizer.sha256))
      retok = not same or conv in ("mdlm", "duo", "remdm")
      if retok:
        if decode is None or self.tokenizer is None:
          raise ValueError(f"judge {self.name!r}: convention {conv!r} retokenizes text; "
                           "pass the model's decode and a judge tokenizer")
        texts = list(decode(samples))
    if retok:
      rows = [np.asarray(r, np.int64) for r in self.tokenizer.encode_batch(texts)]
    else:
      if samples.size and samples.max() >= self.vocab_size:
        raise ValueError(f"samples hold token {samples.max()} outside the judge's "
                         f"vocabulary of {self.vocab_size}")
      rows = [np.asarray(r, np.int64) for r in samples]
    bs = ppl_batch_size or PEER_DEFAULTS.get(conv, {}).get("ppl_batch_size", 64)
    if conv == "project":
      out = project(self.nll, rows, self.bos_id, self.context)
    elif conv == "sedd":
      out = sedd(self.nll, rows, self.context, bs)
    else:
      if self.eos_id is None:
        raise ValueError(f"judge {self.name!r} has no EOS token: convention {conv!r} "
                         "pads and masks with it")
      length = max_length or samples.shape[1]
      groups = [rows] if conv == "remdm" or not group_size else [
          rows[i:i + group_size] for i in range(0, len(rows), group_size)]
      out = mdlm(self.nll, groups, self.eos_id, length, self.context, bs)
    out.update(gen_ppl_convention=conv, gen_ppl_judge=self.name,
               gen_ppl_retokenized=bool(retok),
               judge_unigram_entropy=unigram_entropy_rows(rows))
    return out


def unigram_entropy_rows(rows: Sequence[np.ndarray]) -> float:
  """Mean over rows of the entropy (nats) of each row's token histogram."""
  ents = []
  for r in rows:
    if len(r) == 0:
      continue
    _, counts = np.unique(r, return_counts=True)
    p = counts / counts.sum()
    ents.append(float(-(p * np.log(p)).sum()))
  return float(np.mean(ents)) if ents else float("nan")


def _result(total: float, count: int, ppl: float, sequences: int) -> Dict[str, Any]:
  return {"gen_perplexity": ppl, "gen_ppl_tokens": int(count),
          "gen_ppl_nll": total / count if count else float("nan"),
          "gen_ppl_sequences": int(sequences)}


def project(nll: NllFn, rows: Sequence[np.ndarray], bos_id: int, context: int):
  """``project``: BOS + every token, windows of ``context`` tokens each after a BOS;
  ``exp(sum NLL / tokens)``; ``gen_log_perplexity_se``: the standard error over rows of
  each row's mean NLL per token."""
  windows: Dict[int, List[tuple]] = {}
  for i, r in enumerate(rows):
    for s in range(0, len(r), context):
      w = r[s:s + context]
      windows.setdefault(len(w), []).append((i, w))
  row_total = np.zeros(len(rows))
  row_count = np.zeros(len(rows))
  for t, ws in windows.items():
    tg = np.stack([w for _, w in ws])
    inp = np.concatenate([np.full((len(ws), 1), bos_id, tg.dtype), tg[:, :-1]], 1)
    v = nll(inp, tg).sum(-1)
    for (i, _), x in zip(ws, v):
      row_total[i] += x
      row_count[i] += t
  total, count = float(row_total.sum()), int(row_count.sum())
  ppl = math.exp(total / count) if count else float("nan")
  out = _result(total, count, ppl, len(rows))
  per_row = row_total[row_count > 0] / row_count[row_count > 0]
  out["gen_log_perplexity_se"] = (float(per_row.std(ddof=1) / math.sqrt(len(per_row)))
                                  if len(per_row) > 1 else float("nan"))
  return out


def mdlm(nll: NllFn, groups: Sequence[Sequence[np.ndarray]], eos_id: int, max_length: int,
         context: int, ppl_batch_size: int):
  """MDLM's ``compute_generative_perplexity`` on encoded groups (module docstring)."""
  total, count, seqs = 0.0, 0, 0
  for group in groups:
    if not len(group):
      continue
    rows = [r[:max_length] for r in group]                      # truncation=True
    width = max(len(r) for r in rows)                           # padding=True (longest)
    x = np.full((len(rows), width), eos_id, np.int64)
    for i, r in enumerate(rows):
      x[i, :len(r)] = r
    bs = min(ppl_batch_size, len(rows))
    for b in range(len(rows) // bs):                            # remainder dropped
      xb = x[b * bs:(b + 1) * bs]
      seqs += len(xb)
      for s in range(0, width, context):                        # torch.split
        chunk = xb[:, s:s + context]
        if chunk.shape[1] < 2:
          continue
        v = nll(chunk[:, :-1], chunk[:, 1:])
        is_eos = chunk == eos_id
        first_eos = np.cumsum(is_eos, -1) == 1
        w = (first_eos | ~is_eos)[:, 1:]
        total += float((v * w).sum())
        count += int(w.sum())
  ppl = math.exp(total / count) if count else float("nan")
  return _result(total, count, ppl, seqs)


def sedd(nll: NllFn, rows: Sequence[np.ndarray], context: int, ppl_batch_size: int):
  """SEDD's ``run_train.py`` number: mean over sequences of ``exp(mean NLL)`` of tokens
  ``1 ..`` (no BOS), batches of ``ppl_batch_size``, remainder dropped."""
  rows = [r[:context] for r in rows]
  bs = min(ppl_batch_size, len(rows))
  kept = rows[:(len(rows) // bs) * bs] if bs else []
  per_seq, total, count = [], 0.0, 0
  by_len: Dict[int, List[int]] = {}
  for i, r in enumerate(kept):
    by_len.setdefault(len(r), []).append(i)
  vals = [None] * len(kept)
  for t, idx in by_len.items():
    if t < 2:
      raise ValueError("sedd convention: a sequence of fewer than 2 tokens has no "
                       "scored token")
    x = np.stack([kept[i] for i in idx])
    v = nll(x[:, :-1], x[:, 1:])
    for j, i in enumerate(idx):
      vals[i] = v[j]
  for v in vals:
    per_seq.append(math.exp(float(v.mean())))
    total += float(v.sum())
    count += v.size
  ppl = float(np.mean(per_seq)) if per_seq else float("nan")
  return _result(total, count, ppl, len(kept))


def batched_nll(logits_fn: Callable, batch_size: int = 16, max_len: int = 0,
                bucket: int = 64) -> NllFn:
  """An ``NllFn`` from a causal ``logits_fn(inputs [b, T]) -> [b, T, V]``, run jitted in
  fixed batches of ``batch_size`` rows (the last padded by repetition) and lengths
  padded on the right to a multiple of ``bucket`` (at most ``max_len``): a causal
  model's outputs at a position do not depend on later ones, so the padding changes no
  value and the number of compiled shapes stays small."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  @jax.jit
  def _nll(inp, tgt):
    lp = jax.nn.log_softmax(logits_fn(inp).astype(jnp.float32), -1)
    return -jnp.take_along_axis(lp, tgt[..., None], -1)[..., 0]

  def fn(inputs, targets):
    inputs = np.asarray(inputs, np.int32)
    targets = np.asarray(targets, np.int32)
    n, t = inputs.shape
    width = -(-t // bucket) * bucket if bucket else t
    if max_len:
      width = max(t, min(width, max_len))
    if width > t:
      inputs = np.pad(inputs, ((0, 0), (0, width - t)))
      targets = np.pad(targets, ((0, 0), (0, width - t)))
    out = []
    for i in range(0, n, batch_size):
      a, b = inputs[i:i + batch_size], targets[i:i + batch_size]
      pad = batch_size - len(a)
      if pad:
        a = np.concatenate([a, np.repeat(a[-1:], pad, 0)])
        b = np.concatenate([b, np.repeat(b[-1:], pad, 0)])
      out.append(np.asarray(_nll(a, b), np.float64)[:batch_size - pad, :t])
    return np.concatenate(out) if out else np.zeros((0, t))

  return fn
