r"""Baseline row: a plain ResNet-18 embedding (write-up EER 0.34), trained with the identity loss only.

  python -m jaxface.train --config configs/baseline_resnet18.py

A torchvision-style ResNet-18 (post-activation, ReLU, max-pool stem) at the default width and input size, no fake head.
"""
from configs import baseline_adaface_only


def get_config():
  config = baseline_adaface_only.get_config()
  config.model.arch = 'resnet_18'
  return config
