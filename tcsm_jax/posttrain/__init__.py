"""Post-training: teachers as targets, reward and preference fine-tuning, distillation
(from an AR teacher, and self-distillation into fewer steps: ``self_distill``).

Importing this package registers its teacher loaders and fine-tuning builders in
``tcsm_jax.training.experiment`` (``TEACHERS``, ``BUILDERS``).
"""

from tcsm_jax.posttrain import distill, finetune, self_distill  # noqa: F401  (registration)
