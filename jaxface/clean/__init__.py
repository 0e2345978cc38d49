r"""Label cleaning: photos that do not belong, folders that mix people or hold the same person, near-duplicates.

    python -m jaxface.clean DATA_DIR --checkpoint runs/mbf_ms1m_init --out REPORT_DIR \
        [--cache-dir TFDS_DIR/_align_cache] [--aligner mtcnn]
    python scripts/preprocess.py --data-dir DATA_DIR --out TFDS_DIR --exclude REPORT_DIR/exclude.txt

Every photo of train/ is aligned (faces come from the align cache of `scripts/preprocess.py` when `--cache-dir`
points at it; only photos missing there are aligned) and embedded in batches; then, on unit-norm embeddings only:

- Per folder, a graph of its real photos: an edge joins two photos whose cosine is at least `edge`. The largest
  connected component is the folder's identity (a tie goes to the component with the higher mean cosine to the other
  photos). Each photo scores the cosine to the mean of that core (leaving itself out): below `outlier` it does not
  belong. Photos that do not belong and form a component of at least `min_split` photos are a second person: the
  folder is reported `mixed`, with the split proposed (`split` rows give each photo its proposed part); the rest are
  `outlier`s. A folder whose photos share no edge at all (every component one photo, two photos or more) has no
  identity to hold on to: `unresolved`, for a person to decide, and nothing of it is excluded.
- Merge candidates: two folders whose photos show one person. Folder centroids go into an IVF index (k-means cells,
  `IVFIndex`: exact below 2,048 folders), each folder's `neighbours` nearest are scored by the mean cosine of every
  photo pair across the two cores (the dot product of the two mean embeddings); at least `merge` is a candidate.
- Near-duplicates: two photos (any folders, fakes included) with cosine at least `duplicate`, found with the same
  index over photos: `duplicate` inside a folder, `duplicate_across` between folders (one label is wrong, or the
  folders are one person).
- Fake photos (meta.json 1) are never flagged for being fakes and never define a folder's identity: an own fake
  looks like its person, and a generated face of nobody is its own folder. They are embedded and drawn on the
  contact sheets; they take part in the duplicate search only.
- Photos the aligner found no face in are left out (preprocessing skips them too), listed as `faceless`.

Outputs in REPORT_DIR: `report.csv` (kind, folder, photo, other, score, threshold, detail: one row per flagged photo
or folder), `exclude.txt` (the outliers and the photos the proposed splits move out, which `scripts/preprocess.py
--exclude` leaves out of train and val), `sheets/*.png` (contact sheets of the flagged folders and merge pairs, for
review), `embeddings.npz` (keys and embeddings, reused by `--embeddings`) and `summary.json`.

The thresholds were chosen with `python -m research.label_noise.label_noise measure` on realfaces-train with seeded
injected noise and the pretrained MobileFaceNet (`CleanParams` says what each was measured to give). The cleaner
itself needs neither TensorFlow nor PyTorch unless photos have to be aligned (then the aligner's torch loads).

Exit status: 0, or 2 with one line for a user error (missing folder or checkpoint, unreadable embeddings file).
"""
from jaxface.clean.analysis import CleanError, CleanParams, CleanResult, Finding, analyse  # noqa: F401
from jaxface.clean.cleaner import (  # noqa: F401
    BLUE, EMBEDDINGS_NAME, EXCLUDE_NAME, GREEN, RED, REPORT_NAME, SHEETS_DIR, SUMMARY_NAME, contact_sheet,
    embed_data_dir, embed_faces, face_reader, load_embeddings, main, save_embeddings, write_exclude, write_report)
from jaxface.clean.neighbours import IVFIndex, neighbour_pairs  # noqa: F401
