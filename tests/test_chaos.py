"""scripts/chaos.py in small: one trial of each case (kill -9 preprocessing, kill -9 training, a tampered checkpoint).

The 10-trial figures are in docs/reliability.md; this keeps the harness itself from rotting.
"""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_chaos_harness_recovers_every_trial(tmp_path):
  result = subprocess.run([sys.executable, str(REPO / 'scripts' / 'chaos.py'), '--trials', '1', '--out',
                           str(tmp_path / 'chaos')], cwd=REPO, capture_output=True, text=True, timeout=1500)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  lines = result.stdout.splitlines()
  for case in ('preprocess, kill -9', 'train, kill -9 and SIGTERM', 'train, tampered checkpoint'):
    assert f'{case}: 1/1 recovered, 0 lost, 0 duplicated' in lines, result.stdout
  report = json.loads((tmp_path / 'chaos' / 'chaos_report.json').read_text())
  assert report['train']['uninterrupted_twin_max_diff'] == 0.0  # CPU training is deterministic run to run
