"""The challenge layout: people, meta.json, test pairs, labels, exclude lists; any image file -> RGB uint8.

A data folder holds `train/` and/or `test_public/`:

    train/images/<person_id>/<k>.jpg     photos of one person (fakes of that person live here too)
    train/meta.json                      {"<person_id>/<k>.jpg": 0 real | 1 generated}
    test_public/<pair_id>/0.jpg, 1.jpg   pairs to score
    labels.csv                           pair_id,label[,kind] (ours; the challenge published none; kinds:
                                         jaxface.pair_kinds, the five known ones or any name of your own)

`read_photo` is the one photo reader of preprocessing, evaluation and verification; `parse_labels` the one labels.csv
parser (every problem, for `jaxface.data.check`), `read_labels` its reader form (the first problem raises).

Every reader here raises a `DataFormatError` (a `ValueError`) whose message is one line naming the file, what is wrong
and what to do, so command-line tools can print it and exit 2 without a traceback.
"""
from __future__ import annotations

import csv
import dataclasses
import errno
import io
import json
import os
import math
import pathlib
from collections.abc import Collection

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from jaxface import pair_kinds
from jaxface.align import template
from jaxface.align.template import FACE_SIZE  # noqa: F401  (aligned faces are FACE_SIZE crops everywhere)

PathLike = str | os.PathLike



class DataFormatError(ValueError):
  """A data file that cannot be used; the message is "<path>: <what is wrong> (<what to do>)"."""


class ImageReadError(DataFormatError):
  """An image file that cannot be decoded (empty, truncated, corrupt, not an image)."""


@dataclasses.dataclass(frozen=True)
class TrainImage:
  person_id: str
  rel_path: str  # "<person_id>/<k>.jpg", the meta.json key
  path: pathlib.Path
  is_fake: int


@dataclasses.dataclass(frozen=True)
class TestPair:
  pair_id: str
  path0: pathlib.Path
  path1: pathlib.Path


@dataclasses.dataclass(frozen=True)
class PairLabel:
  label: int
  kind: str | None


# ----------------------------------------------------------------------------------------------------------------------
# Images.


def _one_line(error: BaseException) -> str:
  text = ' '.join(str(error).split()) or type(error).__name__
  return f'{type(error).__name__}: {text}'


def _to_uint8(values: np.ndarray) -> np.ndarray:
  """Scales a one-channel integer or float image of any bit depth to uint8, keeping its tones (no clipping)."""
  values = values.astype(np.float64)
  if values.size == 0:
    return values.astype(np.uint8)
  low, high = float(values.min()), float(values.max())
  if low >= 0 and high <= 1.0 and values.dtype.kind == 'f' and high > 0:
    scale = 255.0  # float image in [0, 1]
  elif low >= 0 and high <= 255:
    scale = 1.0
  elif low >= 0 and high <= 65535:
    scale = 255.0 / 65535.0  # 16-bit: 65535 -> 255, 257 -> 1
  else:  # 32-bit ints or floats out of any usual range: stretch what is there
    values = values - low
    scale = 255.0 / max(high - low, 1e-12)
  return np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)


def _composite_on_black(rgba: np.ndarray) -> np.ndarray:
  alpha = rgba[..., 3:4].astype(np.uint16)
  return ((rgba[..., :3].astype(np.uint16) * alpha + 127) // 255).astype(np.uint8)


def _image_to_rgb(img: Image.Image) -> np.ndarray:
  """PIL image of any mode -> (H, W, 3) uint8 RGB. Transparent pixels are composited on black."""
  mode = img.mode
  if mode == 'RGB':
    return np.asarray(img, dtype=np.uint8)
  if mode == 'P':
    # A palette may carry transparency (tRNS / GIF transparency index).
    img = img.convert('RGBA' if 'transparency' in img.info or img.palette.mode == 'RGBA' else 'RGB')
    return _image_to_rgb(img)
  if mode in ('RGBA', 'RGBa', 'LA', 'La', 'PA'):
    return _composite_on_black(np.asarray(img.convert('RGBA'), dtype=np.uint8))
  if mode == 'L':
    grey = np.asarray(img, dtype=np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
  if mode.startswith('I') or mode == 'F':
    # 16-bit PNGs open as 'I;16*' (or 'I'); scale the full range down rather than clip at 255.
    grey = _to_uint8(np.asarray(img))
    if grey.ndim == 3:  # multi-channel 16-bit modes, should Pillow ever return them
      return grey[..., :3] if grey.shape[-1] >= 3 else np.repeat(grey[..., :1], 3, axis=-1)
    return np.repeat(grey[..., None], 3, axis=-1)
  # '1', 'CMYK', 'YCbCr', 'LAB', 'HSV', ...: Pillow knows the conversion.
  return np.asarray(img.convert('RGB'), dtype=np.uint8)


def decode_rgb(data: bytes, name: str) -> np.ndarray:
  """Decodes image bytes of any common format and mode to RGB.

  Greyscale is repeated to three channels; palette images are expanded; alpha (RGBA, LA, palette transparency) is
  composited on black; CMYK is converted; 16-bit greyscale is scaled (65535 -> 255); EXIF orientation is applied.

  Args:
    data: the encoded file contents.
    name: the file name, used only in error messages.

  Returns:
    (H, W, 3) uint8 RGB.

  Raises:
    ImageReadError: empty, truncated, corrupt or not an image; one line naming `name`.
  """
  if not data:
    raise ImageReadError(f'{name}: empty file (0 bytes) (re-copy the file or remove it and its meta.json entry)')
  if ImageFile.LOAD_TRUNCATED_IMAGES:
    # Someone switched on Pillow's silent grey fill; a truncated photo must not pass as a face.
    raise ImageReadError(f'{name}: PIL.ImageFile.LOAD_TRUNCATED_IMAGES is on, so truncation cannot be detected '
                         '(leave it off when reading challenge data)')
  try:
    with Image.open(io.BytesIO(data)) as img:
      img.load()  # decode fully now, so a truncated file fails here and not later
      img = ImageOps.exif_transpose(img)
      rgb = _image_to_rgb(img)
  except UnidentifiedImageError:
    raise ImageReadError(f'{name}: cannot decode image, not a format Pillow recognises ({len(data)} bytes starting '
                         f'{data[:8]!r}) (replace it with a JPEG or PNG)') from None
  except Image.DecompressionBombError as error:
    raise _bomb_error(name, error) from None
  except Exception as error:  # Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
    raise ImageReadError(f'{name}: cannot decode image, truncated or corrupt ({_one_line(error)}) '
                         '(re-copy the file or remove it and its meta.json entry)') from None
  if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
    raise ImageReadError(f'{name}: decoded to an unusable shape {rgb.shape} (replace the file)')
  return np.ascontiguousarray(rgb)


def load_rgb(path: PathLike) -> np.ndarray:
  """Reads an image file of any common format and mode as RGB; see `decode_rgb`.

  Returns:
    (H, W, 3) uint8 RGB.

  Raises:
    ImageReadError: missing, unreadable, empty, truncated or corrupt file; one line naming `path`.
  """
  return decode_rgb(_read_bytes(path), str(path))


def _read_bytes(path: PathLike) -> bytes:
  try:
    return pathlib.Path(path).read_bytes()
  except FileNotFoundError:
    what = 'a symlink to nothing' if pathlib.Path(path).is_symlink() else 'no such file'
    raise ImageReadError(f'{path}: {what} (restore the photo, or remove it from meta.json / its pair)') from None
  except IsADirectoryError:
    raise ImageReadError(f'{path}: a folder where a photo should be (replace it with the image file)') from None
  except OSError as error:
    if error.errno == errno.ELOOP:
      raise ImageReadError(f'{path}: a symlink loop (point the link at the image file, or replace it with the file)'
                           ) from None
    raise ImageReadError(f'{path}: cannot read file ({_one_line(error)}) '
                         '(check the path and its permissions)') from None


def _bomb_error(name: str, error: BaseException) -> ImageReadError:
  return ImageReadError(f'{name}: refused as a decompression bomb ({_one_line(error)}) (replace it with a photo of '
                        'normal size)')


def read_photo(path: PathLike, max_side: int) -> tuple[np.ndarray, tuple[int, int]]:
  """Reads a photo as RGB no larger than `max_side` on its longest side: what an aligner is given.

  The one photo reader of preprocessing, evaluation and verification, so a photo aligns the same way in each (a
  prepared dataset records its max_photo_side in its aligner settings). A large JPEG is decoded straight at a reduced
  scale (libjpeg's DCT scaling), so a 10000x10000 photo costs a few MB and not 300 MB; other formats are decoded
  fully (see `decode_rgb`), then downscaled (antialiased bicubic).

  Returns:
    (H', W', 3) uint8 RGB with max(H', W') <= max_side, and the photo's (H, W) as stored.

  Raises:
    ImageReadError: missing, empty, truncated, corrupt or not an image; one line naming the file.
  """
  data = _read_bytes(path)
  photo = shape = None
  if data[:3] == b'\xff\xd8\xff' and not ImageFile.LOAD_TRUNCATED_IMAGES:
    try:
      with Image.open(io.BytesIO(data)) as img:
        width, height = img.size
        if max(width, height) > max_side:
          scale = max_side / max(width, height)
          img.draft('RGB', (math.ceil(width * scale), math.ceil(height * scale)))
          img.load()  # a truncated file fails here
          photo, shape = np.asarray(ImageOps.exif_transpose(img).convert('RGB'), np.uint8), (height, width)
    except Image.DecompressionBombError as error:
      raise _bomb_error(str(path), error) from None
    except Exception as error:  # pylint: disable=broad-except  (Pillow raises many kinds)
      raise ImageReadError(f'{path}: cannot decode image, truncated or corrupt ({_one_line(error)}) '
                           '(re-copy the file or remove it and its meta.json entry)') from None
  if photo is None:
    photo = decode_rgb(data, str(path))
    shape = photo.shape[:2]
  height, width = photo.shape[:2]
  if max(height, width) > max_side:
    scale = max_side / max(height, width)
    photo = template.resize_photo(photo, max(1, round(width * scale)), max(1, round(height * scale)))
  return photo, (int(shape[0]), int(shape[1]))


# ----------------------------------------------------------------------------------------------------------------------
# Layout.


def meta_path(data_dir: PathLike) -> pathlib.Path:
  return pathlib.Path(data_dir) / 'train' / 'meta.json'


def train_images_dir(data_dir: PathLike) -> pathlib.Path:
  return pathlib.Path(data_dir) / 'train' / 'images'


def test_pairs_dir(data_dir: PathLike) -> pathlib.Path:
  return pathlib.Path(data_dir) / 'test_public'


def default_labels_path(data_dir: PathLike) -> pathlib.Path:
  """Where the pair labels of a data folder live: data_dir/labels.csv."""
  return pathlib.Path(data_dir) / 'labels.csv'


def parse_meta(text: str, name: str) -> tuple[dict[str, int], list[str]]:
  """Parses meta.json text, keeping what is usable.

  Returns:
    ({key: 0|1} for the valid entries, one problem line per invalid entry).

  Raises:
    DataFormatError: the text is not a JSON object at all.
  """
  try:
    raw = json.loads(text)
  except json.JSONDecodeError as error:
    raise DataFormatError(f'{name}: malformed JSON at line {error.lineno} column {error.colno}: {error.msg} '
                          '(fix or regenerate the file)') from None
  if not isinstance(raw, dict):
    raise DataFormatError(f'{name}: expected a JSON object {{"<person>/<k>.jpg": 0 or 1}}, got {type(raw).__name__} '
                          '(fix or regenerate the file)')
  meta, problems = {}, []
  for key, value in raw.items():
    if isinstance(value, bool) or value not in (0, 1) or not isinstance(value, int):
      problems.append(f'{name}: key {key!r} has value {value!r}, expected 0 (real) or 1 (generated) (fix the value)')
    elif key.count('/') != 1 or not all(key.split('/')):
      problems.append(f'{name}: key {key!r} is not "<person_id>/<file>" (fix the key)')
    else:
      meta[key] = value
  return meta, problems


def read_meta(data_dir: PathLike) -> dict[str, int]:
  """Reads train/meta.json of a data folder.

  Returns:
    {"<person_id>/<k>.jpg": 0 real | 1 generated}; {} when the folder has no train/ at all (a test-only folder).

  Raises:
    DataFormatError: meta.json missing while train/ exists, malformed JSON, or a value other than 0/1.
  """
  path = meta_path(data_dir)
  if not path.exists():
    if not (pathlib.Path(data_dir) / 'train').exists():
      return {}
    raise DataFormatError(f'{path}: missing (train/ needs meta.json mapping "<person>/<k>.jpg" to 0 or 1)')
  try:
    text = path.read_text(encoding='utf-8')
  except (OSError, UnicodeDecodeError) as error:
    raise DataFormatError(f'{path}: cannot read ({_one_line(error)}) (check the file)') from None
  meta, problems = parse_meta(text, str(path))
  if problems:
    more = f' (and {len(problems) - 1} more problems)' if len(problems) > 1 else ''
    raise DataFormatError(problems[0] + more)
  return meta


def list_train_images(data_dir: PathLike) -> list[TrainImage]:
  """Lists the training photos named in meta.json that exist on disk, sorted by (person_id, rel_path).

  Keys whose file is missing are skipped (`listing_problems` and `python -m jaxface.data.check` report them); a folder
  or a symlink where a photo should be is listed, so that reading it says what it is.
  """
  images_dir = train_images_dir(data_dir)
  images = []
  for rel_path, is_fake in read_meta(data_dir).items():
    path = images_dir / rel_path
    if path.exists() or path.is_symlink():
      images.append(TrainImage(person_id=rel_path.split('/')[0], rel_path=rel_path, path=path, is_fake=int(is_fake)))
  return sorted(images, key=lambda image: (image.person_id, image.rel_path))


def listing_problems(data_dir: PathLike) -> list[tuple[pathlib.Path, str]]:
  """(path, what is wrong and what to do) for each meta.json key without a file and each photo without a key."""
  images_dir = train_images_dir(data_dir)
  meta = read_meta(data_dir)
  problems = [(images_dir / key, 'named in meta.json but missing (restore it or drop the key)')
              for key in sorted(meta) if not (images_dir / key).exists() and not (images_dir / key).is_symlink()]
  if images_dir.is_dir():
    for person_dir in sorted(p for p in images_dir.iterdir() if p.is_dir() and not p.name.startswith('.')):
      for entry in sorted(person_dir.iterdir()):
        if not entry.name.startswith('.') and f'{person_dir.name}/{entry.name}' not in meta:
          problems.append((entry, 'not in meta.json, so not used (add its key with 0 or 1, or remove the file)'))
  return problems


def list_test_pairs(data_dir: PathLike) -> list[TestPair]:
  """Lists test_public/<pair_id>/ folders sorted by pair_id; [] when there is no test_public/.

  Pairs are listed even when a file is missing, so a scorer fails loudly on them instead of dropping them.
  """
  pairs_dir = test_pairs_dir(data_dir)
  if not pairs_dir.is_dir():
    return []
  pairs = [TestPair(pair_id=entry.name, path0=entry / '0.jpg', path1=entry / '1.jpg')
           for entry in pairs_dir.iterdir() if entry.is_dir() and not entry.name.startswith('.')]
  return sorted(pairs, key=lambda pair: pair.pair_id)


def _normalise_pair_id(pair_id: str) -> str:
  # Spreadsheets drop the leading zeros of "00000042"; pair folders always have 8 digits.
  pair_id = pair_id.strip()
  return pair_id.zfill(8) if pair_id.isdigit() and len(pair_id) < 8 else pair_id


def _label_row_problems(row: list[str], where: str, seen: dict[str, PairLabel],
                        pair_ids: Collection[str] | None) -> tuple[str, PairLabel | None, list[str]]:
  """One labels.csv row -> (pair_id, its label or None when the row is bad, the row's problems)."""
  if len(row) < 2:
    return '', None, [f'{where}: expected pair_id,label[,kind], got {",".join(row)!r} (fix the row)']
  pair_id, label, kind = _normalise_pair_id(row[0]), row[1].strip(), (row[2].strip() if len(row) > 2 else '')
  problems = []
  if label not in ('0', '1'):
    problems.append(f'{where}: pair {pair_id} has label {label!r}, expected 0 or 1 (fix the row)')
  kind_error = pair_kinds.kind_problem(kind, int(label)) if kind and label in ('0', '1') else None
  if kind_error:
    problems.append(f'{where}: pair {pair_id} {kind_error} (fix the row)')
  if pair_ids is not None and pair_id not in pair_ids:
    problems.append(f'{where}: pair {pair_id} has no folder in test_public/ (drop the row or restore the pair)')
  if pair_id in seen:
    problems.append(f'{where}: pair {pair_id} is listed twice (keep one row)')
  return pair_id, None if problems else PairLabel(label=int(label), kind=kind or None), problems


def parse_labels(text: str, name: str, pair_ids: Collection[str] | None = None
                 ) -> tuple[dict[str, PairLabel], list[str]]:
  """Parses labels.csv text (rows `pair_id,label[,kind]`, header optional), keeping the good rows.

  Digit-only pair ids shorter than 8 characters are zero-padded (a spreadsheet may have stripped the zeros); an
  empty kind becomes None. A row is bad when it has fewer than two columns, a label other than 0/1, a kind that is
  not a name or a known kind with the other label (`jaxface.pair_kinds.kind_problem`; a kind of your own may carry
  either label), a pair_id seen before, or (with `pair_ids`) a pair_id without a test_public/ folder.

  Args:
    text: the file's contents.
    name: the file name, used in the problem lines.
    pair_ids: the pair folders that exist; None skips that check.

  Returns:
    ({pair_id: PairLabel} of the good rows, one problem line per problem, each "<name>: line N: ... (fix ...)").
  """
  labels: dict[str, PairLabel] = {}
  problems: list[str] = []
  for line_number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
    if not row or not any(cell.strip() for cell in row):
      continue
    if line_number == 1 and row[0].strip().lower() == 'pair_id':
      continue
    pair_id, label, row_problems = _label_row_problems(row, f'{name}: line {line_number}', labels, pair_ids)
    problems += row_problems
    if label is not None:
      labels[pair_id] = label
  return labels, problems


def read_labels_text(path: PathLike) -> str:
  """The text of a labels file; DataFormatError (one line) when it cannot be read."""
  try:
    return pathlib.Path(path).read_text(encoding='utf-8-sig')
  except (OSError, UnicodeDecodeError) as error:
    raise DataFormatError(f'{path}: cannot read labels ({_one_line(error)}) '
                          '(give a CSV with pair_id,label[,kind])') from None


def read_labels(path: PathLike) -> dict[str, PairLabel]:
  """Reads pair labels: CSV rows `pair_id,label[,kind]`, header optional; see `parse_labels`.

  Raises:
    DataFormatError: missing or unreadable file, or the first bad row (see `parse_labels`), counting the others.
  """
  labels, problems = parse_labels(read_labels_text(path), str(path))
  if problems:
    more = f' (and {len(problems) - 1} more problems)' if len(problems) > 1 else ''
    raise DataFormatError(problems[0] + more)
  return labels


def read_exclude(path: PathLike, data_dir: PathLike | None = None) -> tuple[str, ...]:
  """Reads an exclude list: one meta.json key ("<person_id>/<k>.jpg") a line; blank lines and '#' comments skipped.

  Args:
    path: the file (the exclude.txt of `python -m jaxface.clean`, or written by hand).
    data_dir: when given, every key must be in its train/meta.json (a list made for another folder is refused).

  Raises:
    DataFormatError: unreadable file, a line that is not "<person>/<file>", or a key not in meta.json.
  """
  path = pathlib.Path(path)
  try:
    text = path.read_text(encoding='utf-8')
  except (OSError, UnicodeDecodeError) as error:
    raise DataFormatError(f'{path}: cannot read the exclude list ({type(error).__name__}: {error}) '
                          '(give the exclude.txt of python -m jaxface.clean)') from None
  keys = []
  for number, line in enumerate(text.splitlines(), 1):
    line = line.split('#', 1)[0].strip()
    if not line:
      continue
    if line.count('/') != 1 or not all(line.split('/')):
      raise DataFormatError(f'{path}: line {number} {line!r} is not "<person_id>/<file>" (one meta.json key a line)')
    keys.append(line)
  if data_dir is not None:
    meta = read_meta(data_dir)
    unknown = [key for key in keys if key not in meta]
    if unknown:
      raise DataFormatError(f'{path}: {len(unknown)} keys are not in {meta_path(data_dir)}, e.g. {unknown[0]!r} '
                            '(the list was made for another data folder)')
  return tuple(dict.fromkeys(keys))
