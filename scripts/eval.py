"""Scores test pairs with a trained jaxface model: submission.csv, and with labels metrics.json, plots and a table.

    python scripts/eval.py --checkpoint workdir/default --data-dir ../shared/data/realfaces-dev --out eval/dev
    python scripts/eval.py --checkpoint workdir/default --tfds-dir /data/tfds --split val --out eval/val --flip-tta

A thin wrapper over `python -m jaxface.evaluate` (see `jaxface/evaluate.py` for the outputs and metrics).
Exit status: 0 done, 2 for a user error (missing checkpoint, data folder or dataset, unreadable photo), one line.
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # before TensorFlow may load (the --tfds-dir path)

from jaxface import evaluate  # pylint: disable=wrong-import-position

if __name__ == '__main__':
  sys.exit(evaluate.main())
