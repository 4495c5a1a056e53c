"""The config of an existing workdir (a converted MDLM / SEDD / DUO, or any run).

  --config=experiments/configs/pretrained.py:W

returns ``W/config.json``: its model, process and schedule, so that a new run has the
same network. Post-training a converted checkpoint then needs only the data and the
objective as flags:

  # fine-tuning (the reference is W; the head has W's shape and starts at zero)
  python -m experiments.finetune --config=experiments/configs/pretrained.py:W \
      --workdir=FT --config.finetune.kind=reward --config.finetune.ref_workdir=W \
      --config.data.path=PREPARED_DIR ...
  # distillation / continued training from W's parameters
  python -m experiments.distill --config=experiments/configs/pretrained.py:W \
      --workdir=S --teacher_workdir=T --config.train.init_from=W \
      --config.data.path=PREPARED_DIR ...
"""

from tcsm_jax.training import workdir as workdir_lib


def get_config(workdir: str = ""):
  if not workdir:
    raise ValueError("pretrained.py needs a workdir: "
                     "--config=experiments/configs/pretrained.py:W")
  return workdir_lib.load_config(workdir)
