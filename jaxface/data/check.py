"""Checks a data folder in the challenge layout and reports every problem, one line each naming the file.

    python -m jaxface.data.check DATA_DIR [--labels PATH] [--workers N]

Prints what it found (people, real and fake photos, test pairs, labelled pairs by kind) and then every problem: a
meta.json key without a file, a file without a key, a value other than 0/1, malformed JSON, an empty, truncated or
unreadable image (every image is fully decoded), a pair folder without 0.jpg or 1.jpg, an empty person folder, a
labels.csv row naming a missing pair, with a bad label or kind. Exit status 0 when clean, 2 with problems.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import json
import os
import pathlib
import sys
import time
from collections.abc import Sequence

from jaxface.data import challenge

@dataclasses.dataclass
class Report:
  """What `check` found in a data folder. `problems` holds one line per problem, each naming the file."""
  data_dir: pathlib.Path
  people: int = 0
  real_images: int = 0
  fake_images: int = 0
  test_pairs: int = 0
  labels_path: pathlib.Path | None = None
  labelled_pairs: dict[str, int] = dataclasses.field(default_factory=dict)  # kind ('unknown' if none) -> count
  decoded_images: int = 0
  seconds: float = 0.0
  problems: list[str] = dataclasses.field(default_factory=list)

  @property
  def ok(self) -> bool:
    return not self.problems

  def summary_lines(self) -> list[str]:
    kinds = ', '.join(f'{kind} {count}' for kind, count in sorted(self.labelled_pairs.items()))
    labelled = sum(self.labelled_pairs.values())
    labels = (f'{labelled} labelled pairs ({kinds}) in {self.labels_path}' if self.labels_path
              else 'no labels.csv')
    return [
        f'data folder: {self.data_dir}',
        f'  people (train folders): {self.people}',
        f'  train images: {self.real_images + self.fake_images} ({self.real_images} real, {self.fake_images} fake)',
        f'  test pairs: {self.test_pairs}',
        f'  labels: {labels}',
        f'  decoded images: {self.decoded_images} in {self.seconds:.1f} s',
        f'problems: {len(self.problems)}',
    ]


def _reject_duplicate_keys(pairs):
  keys = collections.Counter(key for key, _ in pairs)
  duplicates = [key for key, count in keys.items() if count > 1]
  if duplicates:
    raise ValueError(f'duplicate key {duplicates[0]!r}')
  return dict(pairs)


def _check_meta(data_dir: pathlib.Path, report: Report) -> tuple[dict[str, int], set[str]] | None:
  """Reads meta.json, recording every problem; returns (valid entries, every key), or None if it is unusable."""
  path = challenge.meta_path(data_dir)
  if not path.is_file():
    report.problems.append(f'{path}: missing (train/ needs meta.json mapping "<person>/<k>.jpg" to 0 or 1)')
    return None
  try:
    text = path.read_text(encoding='utf-8')
    keys = set(json.loads(text, object_pairs_hook=_reject_duplicate_keys))
  except (OSError, UnicodeDecodeError) as error:
    report.problems.append(f'{path}: cannot read ({type(error).__name__}: {error}) (check the file)')
    return None
  except ValueError as error:
    if not isinstance(error, json.JSONDecodeError):  # a duplicate key; the JSON itself parses
      report.problems.append(f'{path}: {error} (keep one entry per photo)')
    keys = None
  try:
    meta, problems = challenge.parse_meta(text, str(path))
  except challenge.DataFormatError as error:
    report.problems.append(str(error))
    return None
  report.problems.extend(problems)
  return meta, set(json.loads(text)) if keys is None else keys


def _check_train(data_dir: pathlib.Path, report: Report) -> list[pathlib.Path]:
  """Checks train/ against meta.json; returns the image files to decode."""
  images_dir = challenge.train_images_dir(data_dir)
  meta_and_keys = _check_meta(data_dir, report)
  if not images_dir.is_dir():
    report.problems.append(f'{images_dir}: missing (train/ needs images/<person>/<k>.jpg)')
    return []
  on_disk: set[str] = set()
  listed = meta_and_keys[1] if meta_and_keys is not None else set()
  people = 0
  for person_dir in sorted(images_dir.iterdir()):
    if person_dir.name.startswith('.'):
      continue
    if not person_dir.is_dir():
      report.problems.append(f'{person_dir}: a file where person folders belong (move it into a person folder)')
      continue
    people += 1
    entries = sorted(entry for entry in person_dir.iterdir() if not entry.name.startswith('.'))
    if not entries:
      report.problems.append(f'{person_dir}: empty person folder (remove it or add its photos)')
    for entry in entries:
      if entry.is_dir() and f'{person_dir.name}/{entry.name}' not in listed:  # a listed one is decoded: one line
        report.problems.append(f'{entry}: a folder inside a person folder (photos must be <person>/<k>.jpg)')
      else:
        on_disk.add(f'{person_dir.name}/{entry.name}')
  report.people = people
  if meta_and_keys is not None:
    meta, keys = meta_and_keys
    for key in sorted(keys - on_disk):
      report.problems.append(f'{images_dir / key}: named in meta.json but missing (restore it or drop the key)')
    for key in sorted(on_disk - keys):
      report.problems.append(f'{images_dir / key}: file without a meta.json key (add the key with 0 or 1, or remove '
                             'the file)')
    present = [key for key in meta if key in on_disk]
    report.fake_images = sum(meta[key] for key in present)
    report.real_images = len(present) - report.fake_images
  return [images_dir / key for key in sorted(on_disk)]


def _check_test(data_dir: pathlib.Path, report: Report) -> tuple[list[pathlib.Path], set[str]]:
  """Checks test_public/; returns the image files to decode and the pair ids."""
  pairs = challenge.list_test_pairs(data_dir)
  report.test_pairs = len(pairs)
  pairs_dir = challenge.test_pairs_dir(data_dir)
  for entry in sorted(pairs_dir.iterdir()) if pairs_dir.is_dir() else []:
    if not entry.is_dir() and not entry.name.startswith('.'):
      report.problems.append(f'{entry}: a file where pair folders belong (remove it)')
  files = []
  for pair in pairs:
    for path in (pair.path0, pair.path1):
      if path.is_file() or path.is_dir() or path.is_symlink():  # a folder or a symlink loop: decoding says which
        files.append(path)
      else:
        report.problems.append(f'{path}: missing from pair folder {pair.pair_id} (each pair needs 0.jpg and 1.jpg)')
  return files, {pair.pair_id for pair in pairs}


def _check_labels(path: pathlib.Path, pair_ids: set[str], report: Report) -> None:
  """Checks labels.csv with the readers' parser, recording every bad row, not just the first."""
  report.labels_path = path
  try:
    text = challenge.read_labels_text(path)
  except challenge.DataFormatError as error:
    report.problems.append(str(error))
    return
  labels, problems = challenge.parse_labels(text, str(path), pair_ids)
  report.problems.extend(problems)
  report.labelled_pairs = dict(collections.Counter(label.kind or 'unknown' for label in labels.values()))


def _decode_problem(path: pathlib.Path) -> str | None:
  try:
    challenge.load_rgb(path)
  except challenge.ImageReadError as error:
    return str(error)
  return None


def _check_images(paths: list[pathlib.Path], report: Report, workers: int) -> None:
  # Pillow releases the GIL while decoding, so threads use every core.
  with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
    for problem in pool.map(_decode_problem, paths, chunksize=32):
      if problem:
        report.problems.append(problem)
  report.decoded_images = len(paths)


def check(data_dir: challenge.PathLike, labels_path: challenge.PathLike | None = None,
          workers: int | None = None) -> Report:
  """Checks a data folder (train/ and/or test_public/, optional labels.csv) and fully decodes every image.

  Args:
    data_dir: the folder holding train/ and/or test_public/.
    labels_path: pair labels; default data_dir/labels.csv when it exists.
    workers: decoding threads; default the number of CPUs.

  Returns:
    A Report; `report.ok` is True when no problem was found.
  """
  start = time.perf_counter()
  data_dir = pathlib.Path(data_dir)
  report = Report(data_dir=data_dir)
  has_train = (data_dir / 'train').is_dir()
  has_test = challenge.test_pairs_dir(data_dir).is_dir()
  if not has_train and not has_test:
    report.problems.append(f'{data_dir}: no train/ or test_public/ folder (give the folder that holds them)')
    return report
  train_files = _check_train(data_dir, report) if has_train else []
  test_files, pair_ids = _check_test(data_dir, report)
  labels = pathlib.Path(labels_path) if labels_path else challenge.default_labels_path(data_dir)
  if labels_path or labels.is_file():
    _check_labels(labels, pair_ids, report)
  _check_images(train_files + test_files, report, workers or os.cpu_count() or 1)
  report.seconds = time.perf_counter() - start
  return report


def main(argv: Sequence[str] | None = None) -> int:
  """Command line: prints the report, returns 0 when clean and 2 with problems."""
  parser = argparse.ArgumentParser(prog='python -m jaxface.data.check', description=__doc__.split('\n')[0])
  parser.add_argument('data_dir', help='folder holding train/ and/or test_public/')
  parser.add_argument('--labels', help='pair labels CSV (default DATA_DIR/labels.csv when present)')
  parser.add_argument('--workers', type=int, default=None, help='decoding threads (default: number of CPUs)')
  args = parser.parse_args(argv)
  try:
    report = check(args.data_dir, args.labels, args.workers)
  except Exception as error:  # never a traceback: a bug here must still read as one line
    print(f'{args.data_dir}: check failed ({type(error).__name__}: {" ".join(str(error).split())})', file=sys.stderr)
    return 2
  for line in report.summary_lines():
    print(line)
  for problem in report.problems:
    print(f'  {problem}')
  return 0 if report.ok else 2


if __name__ == '__main__':
  sys.exit(main())
