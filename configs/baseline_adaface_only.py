r"""Baseline row: AdaFace without the fake head (what a plain AdaFace fine-tune scores; write-up EER 0.25).

  python -m jaxface.train --config configs/baseline_adaface_only.py

Measured (docs/results.md), as one row of the comparison table:
  python scripts/compare.py --out runs/compare --set num_epochs=4 --configs baseline_adaface_only
      synthetic test pairs (200): EER 0.300 (cosine = fused: no fake head), 2026-11-29

Same data and backbone as configs/default.py; no fake head, no push-away term: fakes of a person are simply not
trained on (they carry no identity loss), so their cosine to the real photos stays high. Expect an EER close to the
default run's identity-only EER, far above its fused EER.
"""
from configs import default as default_lib


def get_config(runlocal: bool = False):
  config = default_lib.get_config()
  config.model.fake_head = 'none'
  config.loss.fake_weight = 0.0
  config.loss.pushaway_weight = 0.0
  return default_lib.shrink(config) if runlocal else config
