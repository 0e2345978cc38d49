r"""Baseline row: a Siamese network trained on pairs only (write-up EER 0.306).

  python -m jaxface.train --config configs/baseline_siamese.py

Measured (docs/results.md), as one row of the comparison table:
  python scripts/compare.py --out runs/compare --set num_epochs=4 --configs baseline_siamese
      synthetic test pairs (200): EER 0.420 (cosine = fused: no fake head), 2026-11-29

The IR-18 of configs/default.py with no class head loss and no fake head: every pair inside a batch is a training pair
(label 1 for two real photos of one person, 0 otherwise, so a fake of X next to X is a negative), scored by the
reference write-up's BCE with an adaptive margin.
"""
from configs import baseline_adaface_only
from configs import default as default_lib


def get_config(runlocal: bool = False):
  config = baseline_adaface_only.get_config()
  config.loss.identity_weight = 0.0
  config.loss.pair_weight = 1.0
  return default_lib.shrink(config) if runlocal else config
