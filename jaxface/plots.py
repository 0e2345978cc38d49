"""Figures: ROC and DET curves of several scores, score histograms by pair kind, and a preview of aligned faces.

Figures are drawn on `matplotlib.figure.Figure` with the Agg canvas directly, so no pyplot state or GUI backend is
touched (safe in threads, on headless machines and inside a notebook that uses another backend).
"""
from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.stats import norm
from sklearn import metrics as sk_metrics

from jaxface import metrics

# Draw order and colours of pair kinds, genuine first.
KIND_COLOURS = {'same': 'tab:green', 'different': 'tab:blue', 'own_fake': 'tab:red', 'other_fake': 'tab:orange',
                'fake': 'tab:purple'}


def _save(figure: Figure, path) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  FigureCanvasAgg(figure)
  figure.savefig(path, dpi=110, bbox_inches='tight')
  return path


def roc_det_plot(labels, scores: Mapping[str, np.ndarray], path, title: str = '') -> pathlib.Path:
  """Writes a PNG with the ROC (log FPR) and DET (probit axes) curves of each score, EER points marked.

  Args:
    labels: (N,) 0/1, 1 for a genuine pair.
    scores: {name: (N,) similarities}, e.g. {'fused': ..., 'cosine': ...}.
    path: the PNG to write.
    title: figure title.

  Returns:
    The path written.
  """
  labels = np.asarray(labels)
  figure = Figure(figsize=(11, 4.8))
  roc_axes, det_axes = figure.subplots(1, 2)
  floor = 0.5 / max(int(np.sum(labels == 0)), 1)  # where FPR = 0 is drawn on the log axis
  for name, values in scores.items():
    eer = metrics.challenge_eer(labels, values)
    fpr, tpr, _ = sk_metrics.roc_curve(labels, values, drop_intermediate=False)
    line, = roc_axes.plot(np.maximum(fpr, floor), tpr, label=f'{name} (EER {eer:.4f})')
    det_fpr, det_fnr, _ = sk_metrics.det_curve(labels, values)
    clip = lambda rates: norm.ppf(np.clip(rates, 1e-4, 1 - 1e-4))
    det_axes.plot(clip(det_fpr), clip(det_fnr), color=line.get_color(), label=name)
    det_axes.plot(clip([eer]), clip([eer]), 'o', color=line.get_color())
  roc_axes.set_xscale('log')
  roc_axes.set_xlim(floor, 1.0)
  roc_axes.set_ylim(0.0, 1.01)
  roc_axes.set_xlabel('false accept rate')
  roc_axes.set_ylabel('true accept rate')
  roc_axes.set_title('ROC')
  roc_axes.grid(True, which='both', alpha=0.3)
  roc_axes.legend(loc='lower right')
  ticks = np.array([1e-3, 1e-2, 0.05, 0.2, 0.5, 0.8])
  for axis_ticks, axis_labels in ((det_axes.set_xticks, det_axes.set_xticklabels),
                                  (det_axes.set_yticks, det_axes.set_yticklabels)):
    axis_ticks(norm.ppf(ticks))
    axis_labels([f'{t:g}' for t in ticks])
  det_axes.plot(norm.ppf([1e-4, 1 - 1e-4]), norm.ppf([1e-4, 1 - 1e-4]), ':', color='grey', lw=0.8)
  det_axes.set_xlim(norm.ppf(5e-4), norm.ppf(0.9))
  det_axes.set_ylim(norm.ppf(5e-4), norm.ppf(0.9))
  det_axes.set_xlabel('false accept rate')
  det_axes.set_ylabel('false reject rate')
  det_axes.set_title('DET (EER where a curve meets the diagonal)')
  det_axes.grid(True, alpha=0.3)
  if title:
    figure.suptitle(title)
  return _save(figure, path)


def score_histograms(scores: Mapping[str, np.ndarray], kinds: Sequence[str | None], path,
                     thresholds: Mapping[str, float] | None = None, title: str = '') -> pathlib.Path:
  """Writes a PNG with one panel per score: a density histogram of the score for each pair kind.

  Args:
    scores: {name: (N,) similarities}.
    kinds: (N,) pair kinds ('same', 'different', 'own_fake', 'other_fake', 'fake'; None = unknown).
    path: the PNG to write.
    thresholds: {name: threshold} drawn as a vertical line (e.g. the threshold at the EER).
    title: figure title.

  Returns:
    The path written.
  """
  kinds = np.array([kind or 'unknown' for kind in kinds], dtype=object)
  present = [kind for kind in KIND_COLOURS if np.any(kinds == kind)]
  present += sorted(set(kinds) - set(KIND_COLOURS))
  figure = Figure(figsize=(5.5 * len(scores), 4.2))
  axes_list = np.atleast_1d(figure.subplots(1, len(scores)))
  bins = np.linspace(-1.0, 1.0, 61)
  for axes, (name, values) in zip(axes_list, scores.items()):
    values = np.asarray(values, dtype=np.float64)
    # A labels.csv's own kinds take the colours the known ones leave free, so each stays its own histogram.
    spare = iter(['tab:brown', 'tab:pink', 'tab:olive', 'tab:cyan', 'tab:grey'] * len(present))
    colours = {kind: KIND_COLOURS.get(kind) or next(spare) for kind in present}
    for kind in present:
      selected = values[kinds == kind]
      axes.hist(selected, bins=bins, density=True, alpha=0.45, color=colours[kind],
                label=f'{kind} ({selected.size})')
    if thresholds and name in thresholds:
      axes.axvline(thresholds[name], color='black', ls='--', lw=1, label=f'threshold {thresholds[name]:.3f}')
    axes.set_title(name)
    axes.set_xlabel('similarity')
    axes.set_ylabel('density')
    axes.legend(fontsize='small')
  if title:
    figure.suptitle(title)
  return _save(figure, path)


# Landmark colours of the preview: left eye red, right eye green, nose blue, mouth corners yellow and magenta.
_LANDMARK_COLOURS = [(255, 0, 0), (0, 255, 0), (0, 128, 255), (255, 255, 0), (255, 0, 255)]


def write_preview(examples: Sequence[Mapping[str, np.ndarray]], path) -> pathlib.Path:
  """Writes a PNG grid of aligned faces: train examples with their landmarks and face score, or pairs' first faces.

  Args:
    examples: decoded examples of a prepared dataset (`tfds.as_numpy`): train examples ('image', 'landmarks' in crop
      pixels, 'face_score', 'is_fake') or pair examples ('image0').
    path: the PNG to write.

  Returns:
    The path written: a grid of faces (twice their size when there are 16 or fewer), landmarks as coloured dots (left
    eye red, right eye green, nose blue, mouth corners yellow and magenta), each captioned with its face score (F marks
    a fake).
  """
  faces = [example['image'] if 'image' in example else example['image0'] for example in examples]
  side = faces[0].shape[0] if faces else 112
  scale = 2 if len(faces) <= 16 else 1
  cell = side * scale
  columns = max(1, int(np.ceil(np.sqrt(len(faces)))))
  rows = max(1, int(np.ceil(len(faces) / columns)))
  sheet = Image.new('RGB', (columns * cell, rows * cell), (40, 40, 40))
  draw = ImageDraw.Draw(sheet)
  for index, (example, face) in enumerate(zip(examples, faces)):
    left, top = (index % columns) * cell, (index // columns) * cell
    sheet.paste(Image.fromarray(face).resize((cell, cell), Image.Resampling.NEAREST), (left, top))
    if 'landmarks' in example:
      for (x, y), colour in zip(example['landmarks'], _LANDMARK_COLOURS):
        cx, cy = left + (x + 0.5) * scale, top + (y + 0.5) * scale
        draw.ellipse([cx - 2, cy - 2, cx + 2, cy + 2], fill=colour)
      caption = f'{float(example["face_score"]):.2f}' + (' F' if example['is_fake'] == 1 else '')
      draw.text((left + 2, top + 1), caption, fill=(255, 255, 0))
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  sheet.save(path)
  return path
