"""Preprocessing (python -m jaxface.preprocess, scripts/preprocess.py) end to end on tiny synthetic data (aligner
'none'): bad photos, exit codes, kill -9 and resume.

The resume test runs the script in a subprocess that sleeps after each aligned batch (the test-only hook
JAXFACE_PREPROCESS_SLEEP_PER_BATCH), kills it with SIGKILL once the cache holds some faces, reruns it, and checks that
the cached faces were not aligned again and that the TFRecords equal those of an uninterrupted run.
"""
from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from jaxface.data import align_stage as stage
from jaxface import preprocess
from jaxface.data import builder, prepared, synthetic

import tensorflow as tf  # noqa: E402  (after jaxface.data.builder hid the GPUs)

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / 'scripts' / 'preprocess.py'  # the path configs and write-ups cite: it must keep working


def _records(out: pathlib.Path, split: str) -> list[dict]:
  """Every example of a split as stored, in file order: {feature name: tf.train.Feature}."""
  files = sorted(prepared.dataset_dir(out, prepared.SPLIT_CONFIG[split]).glob(f'{builder.NAME}-{split}.tfrecord-*'))
  assert files, f'no {split} shards in {out}'
  return [dict(tf.train.Example.FromString(raw).features.feature)
          for raw in tf.data.TFRecordDataset([str(f) for f in files]).as_numpy_iterator()]


def _cache_entries(out: pathlib.Path) -> dict[pathlib.Path, tuple[int, int]]:
  return {path: (path.stat().st_mtime_ns, path.stat().st_ino)
          for path in (out / builder.DEFAULT_CACHE_NAME).glob('*/*/*.npz')}


def test_bad_photos_are_reported_and_skipped_with_exit_1(tmp_path, capsys):
  data = tmp_path / 'data'
  synthetic.generate(data, people=4, photos_per_person=3, test_pairs=4, size=48)
  images = data / 'train' / 'images'
  truncated = images / '00000000' / '0.jpg'
  truncated.write_bytes(truncated.read_bytes()[:300])
  empty = images / '00000000' / '1.jpg'
  empty.write_bytes(b'')
  Image.fromarray(np.arange(48 * 48, dtype=np.uint8).reshape(48, 48)).save(images / '00000001' / '0.jpg')  # grey
  rgba = np.zeros((48, 48, 4), np.uint8)
  rgba[..., 0], rgba[..., 3] = 200, 255
  Image.fromarray(rgba).save(images / '00000001' / '1.jpg', format='PNG')  # RGBA, PNG named .jpg
  Image.new('RGB', (10000, 10000), (90, 140, 200)).save(images / '00000002' / '0.jpg', quality=30)
  first_pair = sorted((data / 'test_public').iterdir())[0]
  (first_pair / '1.jpg').write_bytes(b'this is not a JPEG at all')
  out = tmp_path / 'tfds'
  args = ['--data-dir', str(data), '--out', str(out), '--aligner', 'none', '--val-fraction', '0', '--batch-size', '4',
          '--no-progress']

  assert preprocess.main(args) == 1
  printed = capsys.readouterr().out
  report = json.loads((out / builder.REPORT_NAME).read_text())
  assert report['counts']['unreadable'] == 3 and report['counts']['aligned'] == 12 + 8 - 3
  assert report['counts']['skipped'] == 3 and report['skipped_test_pairs'] == [first_pair.name]
  errors = {pathlib.Path(item['path']).relative_to(data).as_posix(): item['error'] for item in report['unreadable']}
  assert set(errors) == {'train/images/00000000/0.jpg', 'train/images/00000000/1.jpg',
                         f'test_public/{first_pair.name}/1.jpg'}
  assert 'empty file' in errors['train/images/00000000/1.jpg']
  assert 'truncated or corrupt' in errors['train/images/00000000/0.jpg']
  assert f'skipped: {empty}' in printed
  assert report['splits'] == {'train': 10, 'test': 3}
  train = {ex['source'].bytes_list.value[0].decode(): ex for ex in _records(out, 'train')}
  assert {'train/images/00000001/0.jpg', 'train/images/00000001/1.jpg', 'train/images/00000002/0.jpg'} <= set(train)
  big = tf.io.decode_jpeg(train['train/images/00000002/0.jpg']['image'].bytes_list.value[0]).numpy()
  assert big.shape == (112, 112, 3) and np.abs(big.astype(int) - (90, 140, 200)).max() <= 3
  rgba_face = tf.io.decode_jpeg(train['train/images/00000001/1.jpg']['image'].bytes_list.value[0]).numpy()
  assert np.abs(rgba_face.astype(int) - (200, 0, 0)).max() <= 3

  # The same output again is a user error (exit 2, one line); --overwrite rebuilds from the cache.
  assert preprocess.main(args) == 2
  error = capsys.readouterr().err.strip()
  assert error.startswith('error: ') and 'already exists' in error and '\n' not in error
  assert preprocess.main(args + ['--overwrite']) == 1
  assert json.loads((out / builder.REPORT_NAME).read_text())['aligned_now'] == 0


def test_missing_data_dir_is_one_line_exit_2(tmp_path, capsys):
  assert preprocess.main(['--data-dir', str(tmp_path / 'nowhere'), '--out', str(tmp_path / 'o'), '--aligner',
                         'none']) == 2
  captured = capsys.readouterr()
  assert captured.err.count('\n') == 1 and 'nowhere: data folder not found' in captured.err
  assert 'Traceback' not in captured.err + captured.out


@pytest.mark.slow  # a subprocess killed part-way
def test_kill_9_then_rerun_aligns_only_the_rest_and_writes_the_same_dataset(tmp_path, monkeypatch):
  data = tmp_path / 'data'
  synthetic.generate(data, people=6, photos_per_person=4, test_pairs=8, size=48)
  total = 24 + 16
  args = ['--data-dir', str(data), '--aligner', 'none', '--batch-size', '2', '--val-fraction', '0.34',
          '--no-progress']
  interrupted, clean = tmp_path / 'interrupted', tmp_path / 'clean'

  env = dict(os.environ, **{stage.SLEEP_ENV: '0.25'})
  with open(tmp_path / 'log.txt', 'wb') as log:
    process = subprocess.Popen([sys.executable, str(SCRIPT), *args, '--out', str(interrupted)], cwd=REPO, env=env,
                               stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while len(_cache_entries(interrupted)) < 6 and process.poll() is None and time.monotonic() < deadline:
      time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
  assert process.returncode == -signal.SIGKILL, (tmp_path / 'log.txt').read_text()
  before = _cache_entries(interrupted)
  assert 6 <= len(before) < total

  monkeypatch.delenv(stage.SLEEP_ENV, raising=False)
  assert preprocess.main(args + ['--out', str(interrupted)]) == 0
  report = json.loads((interrupted / builder.REPORT_NAME).read_text())
  assert (report['from_cache'], report['aligned_now']) == (len(before), total - len(before))
  after = _cache_entries(interrupted)
  assert len(after) == total and all(after[path] == stamp for path, stamp in before.items())  # not rewritten
  assert not list((interrupted / builder.NAME).glob('**/incomplete.*'))

  assert preprocess.main(args + ['--out', str(clean), '--preview', '4']) == 0
  assert json.loads((clean / builder.REPORT_NAME).read_text())['aligned_now'] == total
  for split in ('train', 'val', 'test'):
    assert _records(interrupted, split) == _records(clean, split), split
  assert Image.open(clean / 'preview.png').size == (2 * 224, 2 * 224)
