r"""Baseline row: a Siamese network trained on pairs only (write-up EER 0.306).

  python -m jaxface.train --config configs/baseline_siamese.py

The IR-18 of configs/default.py with no class head loss and no fake head: every pair inside a batch is a training pair
(label 1 for two real photos of one person, 0 otherwise, so a fake of X next to X is a negative), scored by the
reference write-up's BCE with an adaptive margin.
"""
from configs import baseline_adaface_only


def get_config():
  config = baseline_adaface_only.get_config()
  config.loss.identity_weight = 0.0
  config.loss.pair_weight = 1.0
  return config
