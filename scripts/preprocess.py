"""Aligns the challenge photos and writes the `jaxface_faces` TFDS dataset: `python -m jaxface.preprocess` (also
installed as `jaxface-preprocess`), kept here because configs and write-ups cite this path.

    python scripts/preprocess.py --data-dir DATA_DIR --out TFDS_DIR [--aligner mtcnn] [--preview 64]
"""
import os
import pathlib
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # before TensorFlow loads: keep its start-up chatter out
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from jaxface import preprocess  # noqa: E402  pylint: disable=wrong-import-position

if __name__ == '__main__':
  sys.exit(preprocess.main())
