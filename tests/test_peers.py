"""jaxface.peers: pair scoring of a peer recogniser over a challenge folder (a stub peer; dlib itself when present)."""
import numpy as np
import pytest

from jaxface import peers
from jaxface.data import challenge


class MeanColourPeer:
  """A stand-in peer: the descriptor is the photo's mean colour; it 'finds' a face in bright photos only."""
  name = 'stub'

  def describe(self, rgb):
    return rgb.reshape(-1, 3).mean(0).astype(np.float32), bool(rgb.mean() > 60)


def test_score_pairs_labels_every_pair_and_rejects_unreadable_photos(synthetic_data_dir, tmp_path, capsys):
  import shutil
  data = tmp_path / 'data'
  shutil.copytree(synthetic_data_dir, data)
  pairs = challenge.list_test_pairs(data)
  (pairs[0].path1).write_bytes(b'not a jpeg')
  labels = challenge.read_labels(challenge.default_labels_path(data))
  scores = peers.score_pairs(MeanColourPeer(), data, labels)
  assert len(scores.pair_ids) == len(pairs) and scores.face_found.shape == (len(pairs), 2)
  assert scores.similarity[0] == -1e9 and np.all(scores.similarity[1:] <= 0)
  assert set(scores.labels) <= {0, 1} and all(scores.kinds)
  assert str(pairs[0].path1) in capsys.readouterr().err


def test_dlib_peer_describes_a_photo():
  pytest.importorskip('dlib', reason='dlib is in the optional peer extra (pip install -e ".[peer]")')
  peer = peers.build_peer('dlib')
  photo = np.random.default_rng(0).integers(0, 255, (120, 100, 3), dtype=np.uint8)
  descriptor, found = peer.describe(photo)
  assert descriptor.shape == (128,) and np.isfinite(descriptor).all() and not found


def test_unknown_peer_is_one_line():
  with pytest.raises(peers.PeerError, match='unknown peer'):
    peers.build_peer('nope')
