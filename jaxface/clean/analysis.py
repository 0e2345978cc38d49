"""The label cleaner's analysis, on unit-norm embeddings only: per-folder graphs (outliers, mixed folders and their
split, unresolved folders), merge candidates between folders, near-duplicate photos. See `jaxface.clean`, which
embeds the photos and writes the reports, for what each check does and how the thresholds were chosen.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from jaxface.clean.neighbours import IVFIndex, neighbour_pairs

DUPLICATE_NEIGHBOURS = 4  # nearest photos per photo in the duplicate search (a photo rarely has more copies)


class CleanError(ValueError):
  """A user error of the cleaner; the message is one line naming the file and what to do."""


@dataclasses.dataclass(frozen=True)
class CleanParams:
  """Thresholds of the cleaner (cosines of unit-norm embeddings), chosen on measured injected noise.

  Chosen with `python -m research.label_noise.label_noise measure` on realfaces-train (pretrained MobileFaceNet
  `runs/mbf_ms1m_init`, MTCNN faces, 2026-12-03): noise seed 0 over edge 0.25-0.35 x outlier 0.1-0.3 x merge
  0.15-0.45, best min(precision, recall) with the clean copy's own flags counted apart and capped at 250 photos;
  reported on seeds 1 and 2 (research/label_noise/README.md). At these defaults flagged photos score precision 0.75-0.77
  (0.98-0.99 without the 249 photos the cleaner flags on the clean copy too), recall 0.92-0.94; in folders of 5 or
  more photos recall 0.98-0.99. Merge candidates: precision 0.43-0.44 (0.69-0.71 without the clean copy's own),
  recall 0.72-0.77; 1.0 / 1.0 where both folders hold 5 or more photos.

  edge: two photos of one folder are joined in its graph when their cosine is at least this (0.3: on
    realfaces-train 0.37% of 200k random different-person pairs and 91% of the 65k same-folder pairs reach it).
  outlier: a photo whose cosine to its folder's core mean (itself left out) is below this does not belong.
  merge: two folders are a merge candidate when their hubness-corrected mean cross cosine (`merge_scores`) is at
    least this.
  duplicate: two photos are near-duplicates when their cosine is at least this. Measured (`python -m
    research.label_noise.label_noise duplicates`, 300 photos): a JPEG-75 re-encode of a face scores 0.98 or more, a
    copy at 0.8x size and JPEG 60 0.92 or more in 95% of cases; by eye, 20 of 20 sampled pairs at 0.92 or more on
    realfaces-train are the same shot. Harsher copies (0.6x, JPEG 40: median 0.82) are not found: 10% of the photos
    have a different photo of the same person at 0.84 or more.
  min_split: photos that do not belong and are connected among themselves in at least this number make the folder
    `mixed` (a second person, with the split proposed) rather than outliers.
  neighbours: nearest folders looked at per folder in the merge search (the duplicate search looks at the
    min(neighbours, 4) nearest photos of each photo).
  """
  edge: float = 0.3
  outlier: float = 0.25
  merge: float = 0.25
  duplicate: float = 0.92
  min_split: int = 2
  neighbours: int = 10

  def check(self) -> None:
    """Raises CleanError on a value out of range."""
    for name in ('edge', 'outlier', 'merge', 'duplicate'):
      value = getattr(self, name)
      if not -1.0 <= value <= 1.0:
        raise CleanError(f'{name} threshold must be a cosine in [-1, 1], got {value}')
    if self.min_split < 2 or self.neighbours < 1:
      raise CleanError(f'min_split must be >= 2 and neighbours >= 1, got {self.min_split} and {self.neighbours}')


@dataclasses.dataclass(frozen=True)
class Finding:
  """One row of report.csv.

  kind: outlier | mixed | split | unresolved | merge | duplicate | duplicate_across | faceless.
  folder: the person folder; photo: a meta.json key ('' for folder rows); other: the other folder or photo, or the
  proposed part of a split ('part 1', ...); score: the cosine that decided; threshold: the one it was compared with.
  """
  kind: str
  folder: str
  photo: str = ''
  other: str = ''
  score: float = float('nan')
  threshold: float = float('nan')
  detail: str = ''


@dataclasses.dataclass
class FolderResult:
  """The graph analysis of one folder's real photos (indices into the folder's photo list)."""
  core: np.ndarray
  scores: np.ndarray
  flagged: np.ndarray
  parts: list[np.ndarray]
  unresolved: bool


@dataclasses.dataclass
class CleanResult:
  """Everything the cleaner found; `exclude` holds meta.json keys, sorted."""
  findings: list[Finding]
  exclude: list[str]
  folder_results: dict[str, FolderResult]
  merges: list[tuple[str, str, float]]
  duplicates: list[tuple[str, str, float]]
  seconds: dict[str, float]


def _components(adjacency: np.ndarray) -> np.ndarray:
  """Connected-component label of each node of a small dense symmetric adjacency matrix."""
  count = len(adjacency)
  labels = np.full((count,), -1, np.int64)
  current = 0
  for start in range(count):
    if labels[start] >= 0:
      continue
    stack = [start]
    labels[start] = current
    while stack:
      node = stack.pop()
      for other in np.flatnonzero(adjacency[node] & (labels < 0)):
        labels[other] = current
        stack.append(other)
    current += 1
  return labels


def analyse_folder(embeddings: np.ndarray, params: CleanParams) -> FolderResult:
  """The graph analysis of one folder (see the module docstring).

  Args:
    embeddings: (n, D) unit-norm embeddings of the folder's real photos.
    params: thresholds.

  Returns:
    core: indices of the identity's component; scores: (n,) cosine of each photo to the core mean (itself left
    out); flagged: (n,) bool, does not belong; parts: the components of flagged photos of at least min_split photos
    (the proposed new folders); unresolved: no identity could be picked.
  """
  count = len(embeddings)
  if count < 2:
    return FolderResult(core=np.arange(count), scores=np.ones((count,), np.float32), flagged=np.zeros((count,), bool),
                        parts=[], unresolved=False)
  sims = embeddings @ embeddings.T
  adjacency = sims >= params.edge
  np.fill_diagonal(adjacency, False)
  labels = _components(adjacency)
  sizes = np.bincount(labels)
  if sizes.max() == 1:
    # No edge at all. With three photos or more the most similar pair is the identity when it reaches the outlier
    # threshold (two photos of a person with a third, unlike both); two photos cannot be told apart.
    off = np.where(np.eye(count, dtype=bool), -np.inf, sims)
    a, b = np.unravel_index(np.argmax(off), off.shape)
    if count < 3 or off[a, b] < params.outlier:
      return FolderResult(core=np.zeros((0,), np.int64), scores=np.full((count,), np.nan, np.float32),
                          flagged=np.zeros((count,), bool), parts=[], unresolved=True)
    labels = np.arange(count)
    labels[b] = labels[a]
    sizes = np.bincount(labels)
  mean_to_others = (sims.sum(axis=1) - 1.0) / (count - 1)
  candidates = np.flatnonzero(sizes == sizes.max())
  main = max(candidates, key=lambda label: float(mean_to_others[labels == label].mean()))
  core = np.flatnonzero(labels == main)
  core_sum = embeddings[core].sum(axis=0)
  in_core = labels == main
  means = np.where(in_core[:, None], (core_sum[None] - embeddings) / max(len(core) - 1, 1), core_sum[None] / len(core))
  means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
  scores = np.einsum('nd,nd->n', embeddings, means).astype(np.float32)
  flagged = scores < params.outlier
  parts = []
  if flagged.sum() >= params.min_split:
    sub = np.flatnonzero(flagged)
    sub_labels = _components(adjacency[np.ix_(sub, sub)])
    parts = [sub[sub_labels == label] for label in range(sub_labels.max() + 1)
             if (sub_labels == label).sum() >= params.min_split]
  return FolderResult(core=core, scores=scores, flagged=flagged, parts=parts, unresolved=False)


def merge_scores(means: np.ndarray, centroids: np.ndarray, neighbours: int, seed: int = 0
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Scores each folder's nearest folders as merge candidates.

  The evidence is the mean cosine over every photo pair across the two folders (the dot product of their mean
  embeddings), corrected for hubness as CSLS does (Conneau et al. 2018, "Word translation without parallel data"):
  score = 2 s(a, b) - r(a) - r(b), where r(f) is the mean s of folder f to its `neighbours` nearest folders. Some
  faces are close to many others (low resolution, babies, heavy make-up); their raw cosines fill the top of the list
  otherwise. On realfaces-train with injected splits (noise seed 0, pretrained MobileFaceNet) the correction raised
  the best min(precision, recall) of merge candidates from 0.25 to 0.67.

  Args:
    means: (F, D) mean unit embedding of each folder's core.
    centroids: (F, D) the same, unit norm (the search runs on these).
    neighbours: folders looked at per folder.
    seed: seeds the index's k-means.

  Returns:
    (pairs (P, 2) int64 with i < j, mean cosines (P,), scores (P,)).
  """
  index = IVFIndex(centroids, seed=seed)
  _, idx = index.search(centroids, min(neighbours + 1, len(centroids)))
  rows = np.repeat(np.arange(len(centroids)), idx.shape[1])
  cols = idx.reshape(-1)
  keep = (cols >= 0) & (cols != rows)
  rows, cols = rows[keep], cols[keep]
  cross = np.einsum('pd,pd->p', means[rows], means[cols])
  usual = np.zeros((len(centroids),), np.float64)
  counts = np.zeros((len(centroids),), np.float64)
  np.add.at(usual, rows, cross)
  np.add.at(counts, rows, 1.0)
  usual /= np.maximum(counts, 1.0)
  pairs = np.stack([np.minimum(rows, cols), np.maximum(rows, cols)], axis=1)
  pairs, first = np.unique(pairs, axis=0, return_index=True)
  cross = cross[first]
  scores = 2.0 * cross - usual[pairs[:, 0]] - usual[pairs[:, 1]]
  return pairs, cross.astype(np.float32), scores.astype(np.float32)


def _group(folders: Sequence[str]) -> dict[str, np.ndarray]:
  order = np.argsort(np.asarray(folders), kind='stable')
  names = np.asarray(folders)[order]
  starts = np.flatnonzero(np.r_[True, names[1:] != names[:-1]])
  ends = np.r_[starts[1:], len(names)]
  return {str(names[s]): order[s:e] for s, e in zip(starts, ends)}


def analyse(keys: Sequence[str], embeddings: np.ndarray, is_fake: Sequence[int], params: CleanParams | None = None,
            faceless: Iterable[str] = (), seed: int = 0, progress: bool = False, duplicates: bool = True
            ) -> CleanResult:
  """Runs every check on embedded photos.

  Args:
    keys: meta.json keys "<folder>/<file>" of the embedded photos.
    embeddings: (N, D) float32, unit norm (normalised here if not).
    is_fake: (N,) 0 real | 1 generated.
    params: thresholds (default CleanParams()).
    faceless: keys of photos left out because no face was found (reported only).
    seed: seeds the k-means of the nearest-neighbour indexes.
    progress: a progress bar over the folders.
    duplicates: run the near-duplicate search (measurements of the other checks skip it).

  Returns:
    The findings, the exclude list and the per-folder results.
  """
  params = params or CleanParams()
  params.check()
  embeddings = np.asarray(embeddings, np.float32)
  embeddings = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
  keys = list(keys)
  folders = [key.split('/', 1)[0] for key in keys]
  findings: list[Finding] = [Finding('faceless', key.split('/', 1)[0], key, detail='no face found: not analysed')
                             for key in sorted(faceless)]
  seconds: dict[str, float] = {}
  start = time.perf_counter()
  folder_results, exclude, means, flagged_rows = _folder_findings(
      keys, folders, embeddings, np.asarray(is_fake, bool), params, findings, progress)
  seconds['folders'] = time.perf_counter() - start
  start = time.perf_counter()
  merges = _merge_findings(embeddings, folders, means, flagged_rows, params, seed, findings)
  seconds['merge'] = time.perf_counter() - start
  start = time.perf_counter()
  found_duplicates = _duplicate_findings(keys, folders, embeddings, params, seed, findings) if duplicates else []
  seconds['duplicates'] = time.perf_counter() - start
  return CleanResult(findings=findings, exclude=sorted(set(exclude)), folder_results=folder_results, merges=merges,
                     duplicates=found_duplicates, seconds=seconds)


def _folder_findings(keys: list[str], folders: list[str], embeddings: np.ndarray, is_fake: np.ndarray,
                     params: CleanParams, findings: list[Finding], progress: bool
                     ) -> tuple[dict[str, FolderResult], list[str], dict[str, np.ndarray], list[tuple[int, int]]]:
  """Each folder's graph of real photos: outliers, mixed folders (with the split), unresolved folders. Appends their
  findings; returns (per-folder results, photos to exclude, {folder: mean embedding of its core (all of its real
  photos when unresolved)}, (finding index, photo index) of every flagged photo)."""
  groups = _group(folders)
  folder_results: dict[str, FolderResult] = {}
  exclude: list[str] = []
  means: dict[str, np.ndarray] = {}
  flagged_rows: list[tuple[int, int]] = []
  for name in _progress(sorted(groups), 'folders', progress):
    members = groups[name]
    reals = members[~is_fake[members]]
    if not len(reals):
      continue
    result = analyse_folder(embeddings[reals], params)
    folder_results[name] = result
    real_keys = [keys[i] for i in reals]
    if result.unresolved:
      findings.append(Finding('unresolved', name, other=f'{len(reals)} photos', score=float(np.max(
          (embeddings[reals] @ embeddings[reals].T)[~np.eye(len(reals), dtype=bool)])), threshold=params.edge,
          detail='no two real photos reach the edge threshold (nor, with 3 or more, the outlier threshold): no '
          'identity to keep (review)'))
      means[name] = embeddings[reals].mean(axis=0)  # no core: the folder's merges use all its photos
      continue
    in_part = {int(i): number for number, part in enumerate(result.parts, 1) for i in part}
    if result.parts:
      findings.append(Finding('mixed', name, other=f'{len(result.parts) + 1} parts', threshold=params.outlier,
                              detail=f'core {len(result.core)} photos; proposed new folders: ' + ', '.join(
                                  str(len(part)) for part in result.parts) + ' photos'))
    for i in np.flatnonzero(result.flagged):
      kind, other = ('split', f'part {in_part[int(i)]}') if int(i) in in_part else ('outlier', '')
      findings.append(Finding(kind, name, real_keys[i], other=other, score=float(result.scores[i]),
                              threshold=params.outlier,
                              detail='moves to a new folder' if kind == 'split' else 'does not match the folder'))
      exclude.append(real_keys[i])
      flagged_rows.append((len(findings) - 1, int(reals[i])))
    means[name] = embeddings[reals[result.core]].mean(axis=0)
  return folder_results, exclude, means, flagged_rows


def _merge_findings(embeddings: np.ndarray, folders: list[str], folder_means: dict[str, np.ndarray],
                    flagged_rows: list[tuple[int, int]], params: CleanParams, seed: int, findings: list[Finding]
                    ) -> list[tuple[str, str, float]]:
  """Merge candidates among the folders' means (an approximate nearest-neighbour search), and for each flagged photo
  the nearest other folder, named in its row for the reviewer. Appends or amends findings; returns the merges."""
  merges: list[tuple[str, str, float]] = []
  if len(folder_means) < 2:
    return merges
  mean_folders = list(folder_means)
  means = np.stack([folder_means[name] for name in mean_folders]).astype(np.float32)
  centroids = means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
  pairs, cross, scores = merge_scores(means, centroids, params.neighbours, seed)
  for (a, b), mean_cosine, score in zip(pairs, cross, scores):
    if score >= params.merge:
      merges.append((mean_folders[a], mean_folders[b], float(score)))
      findings.append(Finding('merge', mean_folders[a], other=mean_folders[b], score=float(score),
                              threshold=params.merge, detail=f'same person in two folders? mean cosine of photo '
                              f'pairs {mean_cosine:.4f}, less the two folders\' usual neighbour similarity'))
  if flagged_rows:
    index = IVFIndex(centroids, seed=seed)
    sims, idx = index.search(embeddings[[photo for _, photo in flagged_rows]], 2)
    for (row, photo), row_sims, row_idx in zip(flagged_rows, sims, idx):
      for sim, folder in zip(row_sims, row_idx):
        if folder >= 0 and mean_folders[folder] != folders[photo] and sim >= params.outlier:
          finding = findings[row]
          findings[row] = dataclasses.replace(finding, detail=f'{finding.detail}; closest folder '
                                              f'{mean_folders[folder]} (cosine {sim:.3f} to its centroid)')
          break
  return merges


def _duplicate_findings(keys: list[str], folders: list[str], embeddings: np.ndarray, params: CleanParams, seed: int,
                        findings: list[Finding]) -> list[tuple[str, str, float]]:
  """Near-duplicate photos (nearest neighbours above params.duplicate), within a folder or across two."""
  pairs, sims = neighbour_pairs(embeddings, min(params.neighbours, DUPLICATE_NEIGHBOURS), seed=seed)
  found = []
  for (a, b), score in zip(pairs[sims >= params.duplicate], sims[sims >= params.duplicate]):
    across = folders[a] != folders[b]
    found.append((keys[a], keys[b], float(score)))
    findings.append(Finding('duplicate_across' if across else 'duplicate', folders[a], keys[a], other=keys[b],
                            score=float(score), threshold=params.duplicate,
                            detail='near-duplicate in another folder' if across else 'near-duplicate photo'))
  return found


def _progress(items: Sequence[Any], desc: str, enabled: bool) -> Iterable[Any]:
  if not enabled:
    return items
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  return tqdm(items, desc=desc, unit=desc.split()[-1], mininterval=2.0)
