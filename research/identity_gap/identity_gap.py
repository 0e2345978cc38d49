r"""Where the remaining EER of a model comes from: label noise, the identity embedding, or the fake head.

  python -m research.identity_gap.identity_gap --scores runs/eval/rt_mbf_flip/scores.csv \
      --others pretrained=runs/eval/pretrained_rt/scores.csv --others dlib=runs/peer_rt/peer_dlib/scores.csv \
      [--cohort-checkpoint runs/mbf_ms1m_init --tfds-dir runs/rt-mtcnn]

Reads `scores.csv` files (`python -m jaxface.evaluate` writes one; so do the peers of `scripts/compare.py`) of the same
labelled pairs and prints, for the first (`--scores`):
- its EER by the challenge formula overall, same vs different, same vs fake (fused `similarity`, and `cosine` when
  the file has it);
- with a perfect fake head: every pair of kind 'fake' rejected, the cosine kept for the rest;
- without the same pairs that every scorer rejects at its own EER threshold (label-noise candidates), the EER of
  each scorer on the pairs left, and of the first without k of them (the k lowest- and highest-scoring);
- the different-person pairs every scorer accepts (look-alikes or mislabelled: look at them).
With `--cohort-checkpoint` and `--tfds-dir` it also embeds the test split's pairs and one real train photo per person
(up to `--cohort` people) and reports adaptive score normalisation (AS-norm: each side's cosine standardised by the
mean and sd of its top-K cohort similarities, the two halves averaged).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Sequence

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # also run as a file, not only with python -m from the repository

from jaxface import metrics  # noqa: E402  pylint: disable=g-import-not-at-top
from research.identity_gap.blocking_pairs import read_scores  # noqa: E402  pylint: disable=g-import-not-at-top


def _unit(x: np.ndarray) -> np.ndarray:
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _arrays(rows: dict[str, dict], column: str, keep=None):
  ids = sorted(pid for pid in rows if keep is None or pid in keep)
  labels = np.array([int(rows[p]['label']) for p in ids])
  kinds = np.array([rows[p]['kind'] for p in ids])
  return ids, labels, np.array([float(rows[p][column]) for p in ids]), kinds


def eers(labels: np.ndarray, values: np.ndarray, kinds: np.ndarray) -> dict[str, float]:
  out = {'all': metrics.challenge_eer(labels, values)}
  for kind in ('different', 'fake'):
    mask = (kinds == 'same') | (kinds == kind)
    if (kinds == kind).any():
      out[f'vs_{kind}'] = metrics.challenge_eer(labels[mask], values[mask])
  return {k: round(float(v), 4) for k, v in out.items()}


def rejected_and_accepted(rows: dict[str, dict]) -> tuple[set[str], set[str]]:
  """(same pairs below the scorer's EER threshold, different pairs at or above it)."""
  ids, labels, values, kinds = _arrays(rows, 'similarity')
  threshold = metrics.eer_threshold(labels, values)
  rejected = {p for p, v, k in zip(ids, values, kinds) if k == 'same' and v < threshold}
  accepted = {p for p, v, k in zip(ids, values, kinds) if k == 'different' and v >= threshold}
  return rejected, accepted


def as_norm(e0: np.ndarray, e1: np.ndarray, cohort: np.ndarray, k: int) -> np.ndarray:
  """AS-norm of the pair cosines: each side standardised by its top-k cohort similarities, then averaged."""
  e0, e1, cohort = _unit(e0), _unit(e1), _unit(cohort)
  score = (e0 * e1).sum(1)
  halves = []
  for side in (e0, e1):
    top = -np.sort(-(side @ cohort.T), axis=1)[:, :k]
    halves.append((score - top.mean(1)) / top.std(1))
  return 0.5 * (halves[0] + halves[1])


def cohort_embeddings(checkpoint: str, tfds_dir: str, people: int):
  """(test pair embeddings e0, e1, labels, kinds; cohort embeddings of one real train photo per person)."""
  from jaxface.data import prepared  # pylint: disable=import-outside-toplevel
  from jaxface.verify import FaceVerifier  # pylint: disable=import-outside-toplevel
  verifier = FaceVerifier.load(checkpoint)
  dataset = prepared.open_prepared(tfds_dir)
  pairs = list(dataset.as_dataset('test').as_numpy_iterator())
  e0, _ = verifier.infer(np.stack([p['image0'] for p in pairs]))
  e1, _ = verifier.infer(np.stack([p['image1'] for p in pairs]))
  seen, faces = set(), []
  for example in dataset.as_dataset('train').as_numpy_iterator():
    if example['is_fake'] or int(example['label']) in seen:
      continue
    seen.add(int(example['label']))
    faces.append(example['image'])
    if len(faces) >= people:
      break
  cohort, _ = verifier.infer(np.stack(faces))
  return (e0, e1, np.array([int(p['label']) for p in pairs]),
          np.array([p['kind'].decode() for p in pairs]), cohort)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--scores', required=True, help="the model's scores.csv")
  parser.add_argument('--others', action='append', default=[], metavar='NAME=CSV',
                      help='other scorers on the same pairs (repeatable)')
  parser.add_argument('--drop', type=int, default=8, help='k: also drop only k of the all-rejected same pairs')
  parser.add_argument('--cohort-checkpoint', default=None, help='embed with this model for AS-norm')
  parser.add_argument('--tfds-dir', default=None, help='the jaxface_faces dataset of the test pairs (AS-norm)')
  parser.add_argument('--cohort', type=int, default=3000, help='cohort people (AS-norm)')
  parser.add_argument('--top-k', type=int, nargs='+', default=[50, 200, 1000])
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  main_rows = read_scores(args.scores)
  scorers = {'model': main_rows}
  for spec in args.others:
    name, _, path = spec.partition('=')
    scorers[name] = read_scores(path)
  report: dict = {'model': {}}
  columns = ['similarity'] + (['cosine'] if 'cosine' in next(iter(main_rows.values())) else [])
  for column in columns:
    _, labels, values, kinds = _arrays(main_rows, column)
    report['model'][column] = eers(labels, values, kinds)
  _, labels, values, kinds = _arrays(main_rows, columns[-1])
  report['model']['perfect_fake_head'] = eers(labels, np.where(kinds == 'fake', values.min() - 1.0, values), kinds)

  verdicts = {name: rejected_and_accepted(rows) for name, rows in scorers.items()}
  all_rejected = set.intersection(*(v[0] for v in verdicts.values()))
  all_accepted = set.intersection(*(v[1] for v in verdicts.values()))
  report['same_pairs_all_reject'] = sorted(all_rejected)
  report['different_pairs_all_accept'] = sorted(all_accepted)
  report['without_all_rejected'] = {}
  for name, rows in scorers.items():
    keep = set(rows) - all_rejected
    _, labels, values, kinds = _arrays(rows, 'similarity', keep)
    report['without_all_rejected'][name] = eers(labels, values, kinds)
  order = sorted(all_rejected, key=lambda p: float(main_rows[p]['similarity']))
  for label, drop in ((f'{args.drop}_lowest', order[:args.drop]), (f'{args.drop}_highest', order[-args.drop:])):
    _, labels, values, kinds = _arrays(main_rows, 'similarity', set(main_rows) - set(drop))
    report['without_all_rejected'][f'model_without_{label}'] = eers(labels, values, kinds)

  if args.cohort_checkpoint and args.tfds_dir:
    e0, e1, labels, kinds, cohort = cohort_embeddings(args.cohort_checkpoint, args.tfds_dir, args.cohort)
    report['as_norm'] = {'checkpoint': args.cohort_checkpoint, 'cohort': len(cohort),
                         'cosine': eers(labels, (_unit(e0) * _unit(e1)).sum(1), kinds)}
    for k in args.top_k:
      report['as_norm'][f'top_{k}'] = eers(labels, as_norm(e0, e1, cohort, min(k, len(cohort))), kinds)
  print(json.dumps(report, indent=1))
  return 0


if __name__ == '__main__':
  sys.exit(main())
