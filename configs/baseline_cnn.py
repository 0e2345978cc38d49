r"""Baseline row: a small plain CNN (the organisers' baseline class, EER 0.37), identity loss only.

  python -m jaxface.train --config configs/baseline_cnn.py
"""
from configs import baseline_adaface_only


def get_config():
  config = baseline_adaface_only.get_config()
  config.model.arch = 'small_cnn'
  return config
