"""Model FLOPs and peak FLOP/s of known accelerators, for model FLOPs utilisation (MFU).

No flags here (``experiments.benchmarks.train_step`` has them), so tests can import it.
"""

import jax
import numpy as np

# Dense (no sparsity) peak FLOP/s per device from the vendors' data sheets:
# (device_kind substring, bf16/fp16, fp32 matmuls at jax's default precision, fp32 at
# precision 'highest'). First match wins, so the specific names come first.
# NVIDIA: jax's default precision runs float32 matmuls as TF32 on A100/H100/H200.
# TPU: the default precision runs float32 matmuls as one bfloat16 pass, so both
# columns are the bfloat16 peak ('highest' takes ~6 passes: bf16 peak / 6).
PEAK_FLOPS = (
    ("H100 PCIe", 756e12, 378e12, 51.2e12),
    ("H100 NVL", 835e12, 417.5e12, 60e12),
    ("H200 NVL", 835e12, 417.5e12, 60e12),
    ("H100", 989e12, 494.5e12, 66.9e12),     # SXM (device_kind "NVIDIA H100 80GB HBM3")
    ("H200", 989e12, 494.5e12, 66.9e12),     # SXM
    ("A100", 312e12, 156e12, 19.5e12),       # SXM and PCIe, 40 and 80 GB
    ("TPU v4", 275e12, 275e12, 275e12 / 6),
    ("TPU v5 lite", 197e12, 197e12, 197e12 / 6),   # v5e
    ("TPU v5e", 197e12, 197e12, 197e12 / 6),
    ("TPU v5p", 459e12, 459e12, 459e12 / 6),
    ("TPU v5", 459e12, 459e12, 459e12 / 6),        # v5p reports "TPU v5"
    ("TPU v6 lite", 918e12, 918e12, 918e12 / 6),   # v6e (Trillium)
)


def peak_flops(device_kind: str, dtype: str, precision=None):
  """Peak dense FLOP/s of one device for matmuls in ``dtype``, or None if unknown.

  ``precision``: ``jax.config.jax_default_matmul_precision`` (for float32: 'highest'
  or 'float32' selects the full-precision column).
  """
  kind = device_kind.lower()
  for name, half, f32_default, f32_highest in PEAK_FLOPS:
    if name.lower() in kind:
      if dtype in ("bfloat16", "float16"):
        return half
      return f32_highest if str(precision).lower() in ("highest", "float32") else f32_default
  return None


# Dense modules applied once per sequence (noise conditioning), not once per token.
_PER_SEQUENCE = ("cond_in", "cond_out", "adaln", "adaln_final")


def matmul_params(params) -> int:
  """Parameters used in a matmul at every token: Dense kernels and biases except the
  noise-conditioning ones (which see one vector per sequence); not the embedding table
  (a lookup) and not LayerNorm scales."""
  total = 0
  for path, leaf in jax.tree.flatten_with_path(params)[0]:
    names = [str(getattr(k, "key", k)) for k in path]
    if names[-1] not in ("kernel", "bias") or any(n in _PER_SEQUENCE for n in names):
      continue
    total += int(np.prod(leaf.shape))
  return total


def train_flops_per_token(n_matmul: int, layers: int, width: int, seq: int) -> int:
  """Forward + backward model FLOPs per token (PaLM's convention, no rematerialization).

  ``6 N`` for the matmuls with ``N`` parameters (2 forward, 4 backward per parameter),
  plus the attention scores and their use, ``QK^T`` and ``AV``: ``2 * 2 * seq * width``
  per layer forward, times 3 with the backward. Causal models are counted the same
  (no halving for the mask), as PaLM and nanoGPT do.
  """
  return 6 * n_matmul + 12 * layers * width * seq
