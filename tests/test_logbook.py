"""A resumed run cuts metrics.jsonl and the TensorBoard event files back to its checkpoint's step."""
import json

from tensorboard.compat.proto import event_pb2

from jaxface import logbook


def _steps(folder):
  steps = []
  for path in sorted(folder.glob('events.out.tfevents.*')):
    for _, payload in logbook._records(path.read_bytes()):  # pylint: disable=protected-access
      event = event_pb2.Event.FromString(payload)
      if event.summary.value:
        steps.append((event.step, event.summary.value[0].tag))
  return steps


def test_resume_keeps_each_step_once_in_both_logs(tmp_path):
  writer = logbook.MetricWriter(tmp_path)
  for step in range(1, 9):
    writer.write(step, {'loss': 1.0 / step})
  writer.close()
  events = next((tmp_path / 'tensorboard').glob('events.out.tfevents.*'))
  events.write_bytes(events.read_bytes() + b'\x05\x00\x00')  # a record cut short by a kill
  assert _steps(tmp_path / 'tensorboard') == [(s, 'loss') for s in range(1, 9)]

  writer = logbook.MetricWriter(tmp_path, start_step=5)  # resumed from the checkpoint of step 5
  for step in range(6, 11):
    writer.write(step, {'loss': 2.0})
  writer.close()
  assert sorted(_steps(tmp_path / 'tensorboard')) == [(s, 'loss') for s in range(1, 11)]
  lines = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert [line['step'] for line in lines] == list(range(1, 11))
  assert [line['loss'] for line in lines[5:]] == [2.0] * 5


def test_truncation_is_a_no_op_without_logs_or_newer_steps(tmp_path):
  assert logbook.truncate_events(tmp_path / 'missing', 3) == 0
  logbook.truncate_metrics(tmp_path / 'metrics.jsonl', 3)
  assert not (tmp_path / 'metrics.jsonl').exists()
