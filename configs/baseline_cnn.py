r"""Baseline row: a small plain CNN (the organisers' baseline class, EER 0.37), identity loss only.

  python -m jaxface.train --config configs/baseline_cnn.py

Measured (docs/results.md), as one row of the comparison table:
  python scripts/compare.py --out runs/compare --set num_epochs=4 --configs baseline_cnn
      synthetic test pairs (200): EER 0.480 (cosine = fused: no fake head), 2026-11-29
"""
from configs import baseline_adaface_only
from configs import default as default_lib


def get_config(runlocal: bool = False):
  config = baseline_adaface_only.get_config()
  config.model.arch = 'small_cnn'
  return default_lib.shrink(config) if runlocal else config
