r"""Trains several configs on the same data and prints their EERs side by side (docs/results.md's baseline table).

    python scripts/compare.py --out runs/compare                       # synthetic data, the five rows
    python scripts/compare.py --out runs/compare-dev --tfds-dir TFDS   # a prepared dataset (scripts/preprocess.py)
    python scripts/compare.py --out runs/x --configs default baseline_cnn --set num_epochs=4
    python scripts/compare.py --out runs/peer --configs --peers dlib --data-dir ../shared/data/realfaces-train

`--peers dlib` adds a row for a recogniser a user would pick instead (`jaxface.peers`: face_recognition's dlib
ResNet), scored on the raw photos of `--data-dir`'s test_public/ pairs with its labels.csv; its own detector finds the
faces. It has no fake detector, so its fused EER is its plain one.

Each row is `python -m jaxface.train --config configs/<name>.py --workdir OUT/<name>` in its own process (so a
crashed or killed row costs only itself, and rerunning the command resumes or reuses finished rows), then the
row's best checkpoint scored on the dataset's test split with `jaxface.evaluate` (outputs in OUT/<name>/eval).

Columns: the validation EER of the plain cosine and of the fused score (what training selected the checkpoint on),
the same two on the test pairs, and fake detection on the test pairs: ROC AUC per pair ("does this pair hold a
generated photo", scored 1 - (1 - p0)(1 - p1)) and per photo where the photo's label is known. Rows without a fake
head show '-' for detection and fused = cosine. Writes OUT/compare.json and OUT/compare.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Sequence

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

REPO = pathlib.Path(__file__).resolve().parents[1]
ROWS = ('default', 'baseline_adaface_only', 'baseline_resnet18', 'baseline_cnn', 'baseline_siamese')


@dataclasses.dataclass
class Variant:
  """One row: a config file plus overrides."""
  name: str
  config: str
  overrides: tuple[str, ...] = ()


def config_path(name: str) -> pathlib.Path:
  path = pathlib.Path(name)
  if path.suffix == '.py':
    return path
  return REPO / 'configs' / f'{name}.py'


def train(variant: Variant, workdir: pathlib.Path, data_overrides: list[str]) -> float:
  """Trains (or resumes, or finds finished) one row; returns the wall time of this call in seconds."""
  log = workdir.parent / f'{workdir.name}.train.log'
  workdir.parent.mkdir(parents=True, exist_ok=True)
  cmd = [sys.executable, '-m', 'jaxface.train', '--config', str(config_path(variant.config)), '--workdir',
         str(workdir), '--config.progress=false', *data_overrides, *(f'--config.{o}' for o in variant.overrides)]
  print(f'[{variant.name}] {" ".join(cmd[1:])}  (log: {log})', flush=True)
  start = time.time()
  with open(log, 'a') as f:
    result = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, check=False)
  if result.returncode != 0:
    tail = log.read_text().strip().splitlines()[-1:] or ['(no output)']
    raise SystemExit(f'error: {variant.name}: training failed (exit {result.returncode}): {tail[0]} (see {log})')
  return time.time() - start


def _val_metrics(workdir: pathlib.Path) -> dict:
  """The best checkpoint's validation metrics, from metrics.jsonl (the row with the lowest fused EER)."""
  rows = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  vals = [r for r in rows if 'val_eer_fused' in r]
  return min(vals, key=lambda r: r['val_eer_fused']) if vals else {}


def row_of(variant: Variant, workdir: pathlib.Path, seconds: float) -> dict:
  """One row: the best checkpoint's validation metrics and its scores on the dataset's test split."""
  from jaxface import checkpoints, evaluate  # pylint: disable=import-outside-toplevel

  config = checkpoints.load_config(workdir)
  val = _val_metrics(workdir)
  test = evaluate.evaluate(workdir, workdir / 'eval', tfds_dir=config.data.tfds_dir, split='test', progress=False)
  has_head = config.model.fake_head != 'none' and config.loss.fake_weight > 0
  path = config_path(variant.config)
  return {
      'name': variant.name,
      'config': str(path.relative_to(REPO)) if path.is_relative_to(REPO) else variant.config,
      'overrides': list(variant.overrides),
      'arch': config.model.arch,
      'val_eer_cosine': val.get('val_eer_identity'),
      'val_eer_fused': val.get('val_eer_fused') if has_head else val.get('val_eer_identity'),
      'test_eer_cosine': test.get('cosine', {}).get('eer'),
      'test_eer_fused': test.get('fused', {}).get('eer') if has_head else test.get('cosine', {}).get('eer'),
      'test_eer_by_kind_fused': test.get('fused', {}).get('eer_by_kind'),
      'fake_auc_pair': test.get('fake_detection_pair', {}).get('auc') if has_head else None,
      'fake_auc_image': test.get('fake_detection_image', {}).get('auc') if has_head else None,
      'test_pairs': test.get('labelled_pairs'),
      'train_seconds': round(seconds, 1),
  }


def peer_row(name: str, data_dir: str, out: pathlib.Path) -> dict:
  """A peer's row on the labelled test pairs of a challenge folder; its scores go to OUT/peer_<name>/scores.csv."""
  from jaxface import metrics, peers  # pylint: disable=import-outside-toplevel
  from jaxface.data import challenge  # pylint: disable=import-outside-toplevel

  labels_path = challenge.default_labels_path(data_dir)
  labels = challenge.read_labels(labels_path) if labels_path.is_file() else {}
  start = time.time()
  scores = peers.score_pairs(peers.build_peer(name), data_dir, labels, progress=True)
  seconds = time.time() - start
  folder = out / f'peer_{name}'
  folder.mkdir(parents=True, exist_ok=True)
  with open(folder / 'scores.csv', 'w') as f:
    f.write('pair_id,similarity,label,kind,face_found0,face_found1\n')
    for i, pair_id in enumerate(scores.pair_ids):
      f.write(f'{pair_id},{scores.similarity[i]:.6f},{scores.labels[i]},{scores.kinds[i]},'
              f'{int(scores.face_found[i, 0])},{int(scores.face_found[i, 1])}\n')
  known = scores.labels >= 0
  y, s, kinds = scores.labels[known], scores.similarity[known], list(scores.kinds[known])
  eer = metrics.challenge_eer(y, s) if known.any() else None
  return {
      'name': f'peer_{name}', 'config': f'jaxface.peers ({name})', 'overrides': [], 'arch': name,
      'val_eer_cosine': None, 'val_eer_fused': None,
      'test_eer_cosine': eer, 'test_eer_fused': eer,
      'test_eer_by_kind_fused': metrics.eer_by_kind(y, s, kinds) if known.any() else None,
      'test_tar_at_far_0.001': metrics.tar_at_far(y, s, 1e-3) if known.any() else None,
      'fake_auc_pair': None, 'fake_auc_image': None,
      'test_pairs': int(known.sum()), 'faces_not_found': int((~scores.face_found).sum()),
      'score_seconds': round(seconds, 1),
  }


def dataset_present(tfds_dir: str) -> bool:
  """True when `tfds_dir` holds a jaxface_faces dataset; otherwise says so in one line on stderr."""
  if (pathlib.Path(tfds_dir) / 'jaxface_faces').is_dir():
    return True
  print(f'error: {tfds_dir}: no jaxface_faces dataset here (write one with scripts/preprocess.py)', file=sys.stderr)
  return False


def fmt(value) -> str:
  return '-' if value is None else f'{value:.3f}'


def markdown(rows: list[dict]) -> str:
  lines = ['| row | arch | val EER cosine | val EER fused | test EER cosine | test EER fused | fake AUC (pair) '
           '| fake AUC (photo) |',
           '|---|---|---|---|---|---|---|---|']
  for r in rows:
    lines.append(f'| {r["name"]} | {r["arch"]} | {fmt(r["val_eer_cosine"])} | {fmt(r["val_eer_fused"])} | '
                 f'{fmt(r["test_eer_cosine"])} | {fmt(r["test_eer_fused"])} | {fmt(r["fake_auc_pair"])} | '
                 f'{fmt(r["fake_auc_image"])} |')
  return '\n'.join(lines)


def run(variants: list[Variant], out: pathlib.Path, tfds_dir: str | None, peer_names: Sequence[str] = (),
        data_dir: str | None = None) -> list[dict]:
  """Trains and scores every variant (then scores every peer) into `out`; returns the rows and writes
  compare.json / compare.md."""
  data = [] if not tfds_dir else ['--config.data.source=tfds', f'--config.data.tfds_dir={tfds_dir}']
  rows = []
  for name in peer_names:
    rows.append(peer_row(name, data_dir, out))
    print(markdown(rows[-1:]).splitlines()[-1], flush=True)
  for variant in variants:
    workdir = out / variant.name
    seconds = train(variant, workdir, data)
    rows.append(row_of(variant, workdir, seconds))
    print(markdown(rows[-1:]).splitlines()[-1], flush=True)
  (out / 'compare.json').write_text(json.dumps(rows, indent=2))
  table = markdown(rows)
  (out / 'compare.md').write_text(table + '\n')
  return rows


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--out', required=True, help='folder for the runs (OUT/<row>) and the table')
  parser.add_argument('--tfds-dir', default=None, help='a prepared jaxface_faces dataset (default: synthetic data)')
  parser.add_argument('--configs', nargs='*', default=list(ROWS),
                      help='config names in configs/ or .py paths (none: peers only)')
  parser.add_argument('--peers', nargs='*', default=[], choices=('dlib',),
                      help='peer recognisers to score as rows of their own (jaxface.peers); need --data-dir')
  parser.add_argument('--data-dir', default=None, help='challenge folder whose labelled test pairs the peers score')
  parser.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE',
                      help='a config override for every row (repeatable), e.g. --set num_epochs=4')
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.tfds_dir and not dataset_present(args.tfds_dir):
    return 2
  for name in args.configs:
    if not config_path(name).is_file():
      print(f'error: {config_path(name)}: config not found (names are files in configs/ without .py)',
            file=sys.stderr)
      return 2
  if args.peers and not (args.data_dir and (pathlib.Path(args.data_dir) / 'test_public').is_dir()):
    print(f'error: --peers needs --data-dir with a test_public/ folder (got {args.data_dir})', file=sys.stderr)
    return 2
  variants = [Variant(pathlib.Path(n).stem, n, tuple(args.set)) for n in args.configs]
  rows = run(variants, pathlib.Path(args.out), args.tfds_dir, args.peers, args.data_dir)
  print(markdown(rows))
  return 0


if __name__ == '__main__':
  sys.exit(main())
