"""Post-training: teachers as targets, reward and preference fine-tuning, distillation.

Importing this package registers its teacher loaders and fine-tuning builders in
``tcsm_jax.training.experiment`` (``TEACHERS``, ``BUILDERS``).
"""

from tcsm_jax.posttrain import distill, finetune  # noqa: F401  (registration)
