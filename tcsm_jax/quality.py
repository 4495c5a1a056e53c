"""Sample quality: generative perplexity under an AR judge, unigram entropy."""

from __future__ import annotations

import math
from typing import Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from tcsm_jax.models.transformer import ar_log_likelihood


def judge_log_likelihood(judge_model, judge_params, tokens, batch_size: int = 64):
  """``[num]`` log-likelihoods (nats) of ``tokens [num, length]`` under a causal judge."""
  tokens = np.asarray(tokens, np.int32)
  if tokens.max() >= judge_model.cfg.vocab_size:
    raise ValueError(f"samples hold token {tokens.max()} outside the judge's vocabulary "
                     f"of {judge_model.cfg.vocab_size}")
  fn = jax.jit(lambda p, x: ar_log_likelihood(judge_model, p, x))
  out = []
  for i in range(0, len(tokens), batch_size):
    chunk = tokens[i:i + batch_size]
    pad = batch_size - len(chunk)
    full = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)]) if pad else chunk
    out.append(np.asarray(fn(judge_params, jnp.asarray(full)))[:len(chunk)])
  return np.concatenate(out)


def generative_perplexity(judge_model, judge_params, tokens) -> float:
  """``exp(total NLL / total tokens)`` of samples under the judge."""
  ll = judge_log_likelihood(judge_model, judge_params, tokens)
  return float(math.exp(-ll.sum() / np.asarray(tokens).size))


def unigram_entropy(tokens) -> float:
  """Mean over sequences of the entropy (nats) of each sequence's token histogram.

  Low values flag repetitive samples (the failure that generative perplexity rewards).
  """
  tokens = np.asarray(tokens)
  ents = []
  for row in tokens:
    _, counts = np.unique(row, return_counts=True)
    p = counts / counts.sum()
    ents.append(float(-(p * np.log(p)).sum()))
  return float(np.mean(ents))


def report(tokens, judge=None, reference=None, decode=None, convention: str = "",
           model_tokenizer_sha: Optional[str] = None, **score_kw) -> Dict[str, float]:
  """Quality scalars of ``tokens [num, length]``.

  With a ``(model, params)`` project causal judge on the model's own ids,
  ``gen_perplexity`` is ``exp`` of the mean per-token NLL (BOS prepended; sequences of
  equal length); ``gen_log_perplexity_se`` the standard error of its log over sequences.
  With a ``gen_ppl.Judge`` (``posttrain.judges.load_judge``: a workdir or ``hf:DIR``)
  the samples are decoded with ``decode``, retokenized and scored under ``convention``
  (``gen_ppl.CONVENTIONS``), and the report adds the tokens scored, the convention, the
  judge and the unigram entropy over the judge's tokens.

  Args:
    judge: optional causal judge: ``(model, params)`` or a ``gen_ppl.Judge``.
    reference: optional real data ``[num, length]``; its entropy is reported alongside.
    decode: the model's ``ids -> texts`` (a ``Judge`` with its own tokenizer needs it).
    convention, model_tokenizer_sha, score_kw: passed to ``Judge.score``.
  """
  out = {"unigram_entropy": unigram_entropy(tokens), "num_samples": int(len(tokens))}
  if judge is not None and hasattr(judge, "score"):
    kw = dict(decode=decode, convention=convention,
              model_tokenizer_sha=model_tokenizer_sha, **score_kw)
    out.update(judge.score(np.asarray(tokens), **kw))
    if reference is not None:
      out["data_perplexity_under_judge"] = judge.score(np.asarray(reference),
                                                       **kw)["gen_perplexity"]
  elif judge is not None:
    tokens = np.asarray(tokens)
    nll = -judge_log_likelihood(judge[0], judge[1], tokens) / tokens.shape[1]   # [num]
    out["gen_perplexity"] = float(math.exp(nll.mean()))
    # Standard error of log(gen PPL) over sequences (delta method for the PPL itself).
    se = float(nll.std(ddof=1) / math.sqrt(len(nll))) if len(nll) > 1 else float("nan")
    out["gen_log_perplexity_se"] = se
    if reference is not None:
      out["data_perplexity_under_judge"] = generative_perplexity(judge[0], judge[1],
                                                                 reference)
  if reference is not None:
    out["data_unigram_entropy"] = unigram_entropy(reference)
  return out
