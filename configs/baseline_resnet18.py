r"""Baseline row: a plain ResNet-18 embedding (write-up EER 0.34), trained with the identity loss only.

  python -m jaxface.train --config configs/baseline_resnet18.py

Measured (docs/results.md), as one row of the comparison table:
  python scripts/compare.py --out runs/compare --set num_epochs=4 --configs baseline_resnet18
      synthetic test pairs (200): EER 0.440 (cosine = fused: no fake head), 2026-11-29

A torchvision-style ResNet-18 (post-activation, ReLU, max-pool stem) at the default width and input size, no fake head.
"""
from configs import baseline_adaface_only
from configs import default as default_lib


def get_config(runlocal: bool = False):
  config = baseline_adaface_only.get_config()
  config.model.arch = 'resnet_18'
  return default_lib.shrink(config) if runlocal else config
