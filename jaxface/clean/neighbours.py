"""Approximate nearest neighbours for the label cleaner: an inverted-file (k-means cells) index over unit vectors.

Exact below 2,048 vectors; above, each query looks at its `probe` nearest cells. NumPy and scikit-learn only.
"""
from __future__ import annotations

from typing import Any

import numpy as np


class IVFIndex:
  """An inverted-file index for cosine search: k-means cells, each query scans its `probe` nearest cells.

  Exact (one cell, every vector scanned) below `exact_below` vectors, where a matrix product is cheaper than k-means.
  Above, `cells` defaults to sqrt(N) (rounded), so a query scans about probe / sqrt(N) of the vectors: for 10,000
  folders and probe 8, 8% of them. Numpy and scikit-learn's MiniBatchKMeans only.

  Args:
    vectors: (N, D) unit-norm float32.
    seed: seeds k-means.
    cells: number of k-means cells (None: sqrt(N)).
    probe: cells scanned per query.
    exact_below: below this many vectors the search is exact.
  """

  def __init__(self, vectors: np.ndarray, seed: int = 0, cells: int | None = None, probe: int = 8,
               exact_below: int = 2048):
    self.vectors = np.ascontiguousarray(vectors, np.float32)
    count = len(self.vectors)
    if count < exact_below or count < 4:
      self.cells, self.probe = 1, 1
      self.assign = np.zeros((count,), np.int64)
      self.centres = np.zeros((1, self.vectors.shape[1]), np.float32)
    else:
      from sklearn.cluster import MiniBatchKMeans  # pylint: disable=import-outside-toplevel
      self.cells = int(cells or max(2, round(np.sqrt(count))))
      self.probe = min(probe, self.cells)
      kmeans = MiniBatchKMeans(n_clusters=self.cells, random_state=seed, batch_size=4096, n_init=1,
                               max_iter=20).fit(self.vectors)
      centres = kmeans.cluster_centers_.astype(np.float32)
      self.centres = centres / np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
      self.assign = np.argmax(self.vectors @ self.centres.T, axis=1)
    self.members = [np.flatnonzero(self.assign == cell) for cell in range(self.cells)]

  def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k most similar indexed vectors of each query.

    Returns:
      (cosines (Q, k) float32, indices (Q, k) int64, -1 where fewer than k were scanned), best first.
    """
    queries = np.ascontiguousarray(queries, np.float32)
    best_sim = np.full((len(queries), k), -np.inf, np.float32)
    best_idx = np.full((len(queries), k), -1, np.int64)
    if self.cells == 1:
      probes = np.zeros((len(queries), 1), np.int64)
    else:
      probes = np.argsort(-(queries @ self.centres.T), axis=1)[:, :self.probe]
    for cell in range(self.cells):
      members = self.members[cell]
      asking = np.flatnonzero((probes == cell).any(axis=1))
      if not len(members) or not len(asking):
        continue
      for start in range(0, len(asking), 4096):
        rows = asking[start:start + 4096]
        sims = queries[rows] @ self.vectors[members].T
        take = min(k, len(members))
        top = np.argpartition(-sims, take - 1, axis=1)[:, :take] if take < len(members) else \
            np.broadcast_to(np.arange(len(members)), sims.shape)
        merged_sim = np.concatenate([best_sim[rows], np.take_along_axis(sims, top, axis=1)], axis=1)
        merged_idx = np.concatenate([best_idx[rows], members[top]], axis=1)
        order = np.argsort(-merged_sim, axis=1)[:, :k]
        best_sim[rows] = np.take_along_axis(merged_sim, order, axis=1)
        best_idx[rows] = np.take_along_axis(merged_idx, order, axis=1)
    return best_sim, best_idx


def neighbour_pairs(vectors: np.ndarray, k: int, seed: int = 0, **index_args: Any) -> tuple[np.ndarray, np.ndarray]:
  """Each vector's k nearest others (itself removed) as unique pairs (i < j).

  Returns:
    (pairs (P, 2) int64, their cosines (P,) float32).
  """
  if len(vectors) < 2:
    return np.zeros((0, 2), np.int64), np.zeros((0,), np.float32)
  index = IVFIndex(vectors, seed=seed, **index_args)
  sims, idx = index.search(vectors, min(k + 1, len(vectors)))
  rows = np.repeat(np.arange(len(vectors)), idx.shape[1])
  cols, values = idx.reshape(-1), sims.reshape(-1)
  keep = (cols >= 0) & (cols != rows)
  pairs = np.stack([np.minimum(rows[keep], cols[keep]), np.maximum(rows[keep], cols[keep])], axis=1)
  pairs, first = np.unique(pairs, axis=0, return_index=True)
  return pairs, values[keep][first]
