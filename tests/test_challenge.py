"""Tests for jaxface.data.challenge: any image kind -> RGB uint8, bad files -> one-line ImageReadError, layout."""
from __future__ import annotations

import json
import pathlib
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from jaxface.data import challenge


def _colour_blocks(height: int = 24, width: int = 32) -> np.ndarray:
  """(H, W, 3) uint8: red left half, blue right half."""
  rgb = np.zeros((height, width, 3), np.uint8)
  rgb[:, : width // 2] = (255, 0, 0)
  rgb[:, width // 2:] = (0, 0, 255)
  return rgb


def _assert_rgb(rgb: np.ndarray, shape: tuple[int, int]) -> None:
  assert rgb.dtype == np.uint8
  assert rgb.shape == (*shape, 3)


def test_rgb_png_is_exact(tmp_path):
  rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
  Image.fromarray(rgb).save(tmp_path / 'a.png')
  np.testing.assert_array_equal(challenge.load_rgb(tmp_path / 'a.png'), rgb)


def test_greyscale_jpeg_and_png_repeat_channels(tmp_path):
  grey = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (10, 1))
  Image.fromarray(grey, 'L').save(tmp_path / 'g.png')
  Image.fromarray(grey, 'L').save(tmp_path / 'g.jpg', quality=95)
  png = challenge.load_rgb(tmp_path / 'g.png')
  _assert_rgb(png, (10, 32))
  np.testing.assert_array_equal(png, np.repeat(grey[..., None], 3, -1))
  jpg = challenge.load_rgb(tmp_path / 'g.jpg')
  _assert_rgb(jpg, (10, 32))
  assert np.all(jpg[..., 0] == jpg[..., 1]) and np.abs(jpg[..., 0].astype(int) - grey).max() <= 6


def test_one_bit_image(tmp_path):
  bits = np.zeros((8, 8), bool)
  bits[:, 4:] = True
  Image.fromarray(bits).convert('1').save(tmp_path / 'b.png')
  rgb = challenge.load_rgb(tmp_path / 'b.png')
  _assert_rgb(rgb, (8, 8))
  assert rgb[:, :4].max() == 0 and rgb[:, 4:].min() == 255


def test_palette_with_transparency_composites_on_black(tmp_path):
  index = np.zeros((6, 6), np.uint8)
  index[:, 3:] = 1
  img = Image.fromarray(index, 'P')
  img.putpalette([255, 255, 255, 10, 200, 30] + [0] * 762)
  img.info['transparency'] = 0
  img.save(tmp_path / 'p.png', transparency=0)
  rgb = challenge.load_rgb(tmp_path / 'p.png')
  _assert_rgb(rgb, (6, 6))
  assert rgb[:, :3].max() == 0  # transparent white -> black
  np.testing.assert_array_equal(rgb[0, 5], (10, 200, 30))


def test_palette_without_transparency_and_gif(tmp_path):
  img = Image.fromarray(_colour_blocks()).convert('P', palette=Image.Palette.ADAPTIVE, colors=4)
  img.save(tmp_path / 'p.gif')
  rgb = challenge.load_rgb(tmp_path / 'p.gif')
  _assert_rgb(rgb, (24, 32))
  np.testing.assert_array_equal(rgb[0, 0], (255, 0, 0))
  np.testing.assert_array_equal(rgb[0, -1], (0, 0, 255))


def test_rgba_composites_on_black(tmp_path):
  rgba = np.full((4, 6, 4), 255, np.uint8)
  rgba[:, :2, 3] = 0
  rgba[:, 2:4, 3] = 128
  Image.fromarray(rgba, 'RGBA').save(tmp_path / 'a.png')
  rgb = challenge.load_rgb(tmp_path / 'a.png')
  _assert_rgb(rgb, (4, 6))
  assert rgb[:, :2].max() == 0
  assert np.all(rgb[:, 2:4] == 128)
  assert rgb[:, 4:].min() == 255


def test_la_composites_on_black(tmp_path):
  la = np.full((4, 4, 2), 200, np.uint8)
  la[:2, :, 1] = 0
  la[2:, :, 1] = 255
  Image.fromarray(la, 'LA').save(tmp_path / 'la.png')
  rgb = challenge.load_rgb(tmp_path / 'la.png')
  _assert_rgb(rgb, (4, 4))
  assert rgb[:2].max() == 0 and np.all(rgb[2:] == 200)


def test_cmyk_jpeg_comes_back_as_rgb(tmp_path):
  Image.fromarray(_colour_blocks(32, 32)).convert('CMYK').save(tmp_path / 'c.jpg', quality=95)
  assert Image.open(tmp_path / 'c.jpg').mode == 'CMYK'
  rgb = challenge.load_rgb(tmp_path / 'c.jpg')
  _assert_rgb(rgb, (32, 32))
  np.testing.assert_allclose(rgb[16, 4], (255, 0, 0), atol=20)
  np.testing.assert_allclose(rgb[16, 28], (0, 0, 255), atol=20)


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
  ramp = np.linspace(0, 65535, 64 * 4).astype(np.uint16).reshape(4, 64)
  Image.fromarray(ramp).save(tmp_path / 'deep.png')
  assert Image.open(tmp_path / 'deep.png').mode.startswith('I')
  rgb = challenge.load_rgb(tmp_path / 'deep.png')
  _assert_rgb(rgb, (4, 64))
  expected = np.rint(ramp / 257.0).astype(np.uint8)
  np.testing.assert_array_equal(rgb[..., 0], expected)
  assert rgb.min() == 0 and rgb.max() == 255 and len(np.unique(rgb)) > 200


def test_exif_rotation_is_applied(tmp_path):
  img = Image.fromarray(_colour_blocks(20, 40))  # stored 40 wide, 20 high, red left
  exif = img.getexif()
  exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
  img.save(tmp_path / 'rot.jpg', exif=exif, quality=95)
  rgb = challenge.load_rgb(tmp_path / 'rot.jpg')
  _assert_rgb(rgb, (40, 20))  # displayed 20 wide, 40 high
  np.testing.assert_allclose(rgb[5, 10], (255, 0, 0), atol=30)  # the left half turned to the top
  np.testing.assert_allclose(rgb[35, 10], (0, 0, 255), atol=30)


def test_decode_rgb_from_bytes(tmp_path):
  Image.fromarray(_colour_blocks()).save(tmp_path / 'x.png')
  rgb = challenge.decode_rgb((tmp_path / 'x.png').read_bytes(), 'x.png')
  np.testing.assert_array_equal(rgb, _colour_blocks())


def _jpeg_bytes(tmp_path: pathlib.Path) -> bytes:
  noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
  Image.fromarray(noise).save(tmp_path / 'full.jpg', quality=90)
  return (tmp_path / 'full.jpg').read_bytes()


@pytest.mark.parametrize('kind', ['empty', 'truncated_jpeg', 'truncated_png', 'not_an_image', 'missing'])
def test_bad_files_raise_one_line_error_naming_the_file(tmp_path, kind):
  path = tmp_path / f'bad_{kind}.jpg'
  if kind == 'empty':
    path.write_bytes(b'')
  elif kind == 'truncated_jpeg':
    path.write_bytes(_jpeg_bytes(tmp_path)[:1500])
  elif kind == 'truncated_png':
    noise = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / 'full.png')
    path.write_bytes((tmp_path / 'full.png').read_bytes()[:3000])
  elif kind == 'not_an_image':
    path.write_text('this is not a JPEG\n')
  with pytest.raises(challenge.ImageReadError) as info:
    challenge.load_rgb(path)
  message = str(info.value)
  assert message.startswith(str(path) + ': ')
  assert '\n' not in message
  assert isinstance(info.value, ValueError)


def test_decode_rgb_refuses_when_truncation_is_hidden(tmp_path, monkeypatch):
  monkeypatch.setattr(ImageFile, 'LOAD_TRUNCATED_IMAGES', True)
  with pytest.raises(challenge.ImageReadError, match='LOAD_TRUNCATED_IMAGES'):
    challenge.decode_rgb(_jpeg_bytes(tmp_path)[:1500], 'cut.jpg')


# ----------------------------------------------------------------------------------------------------------------------
# Layout.


def _write_layout(root: pathlib.Path) -> None:
  meta = {}
  for person, count in (('00000002', 2), ('00000001', 3)):
    for k in range(count):
      (root / 'train/images' / person).mkdir(parents=True, exist_ok=True)
      Image.fromarray(_colour_blocks()).save(root / 'train/images' / person / f'{k}.jpg')
      meta[f'{person}/{k}.jpg'] = int(person == '00000001' and k == 2)
  meta['00000001/10.jpg'] = 0  # no file on disk
  (root / 'train/meta.json').write_text(json.dumps(meta))
  for pair in ('00000001', '00000000'):
    (root / 'test_public' / pair).mkdir(parents=True)
    for side in '01':
      Image.fromarray(_colour_blocks()).save(root / 'test_public' / pair / f'{side}.jpg')


def test_read_meta_and_list_train_images(tmp_path):
  _write_layout(tmp_path)
  meta = challenge.read_meta(tmp_path)
  assert len(meta) == 6 and meta['00000001/2.jpg'] == 1
  images = challenge.list_train_images(tmp_path)
  assert [image.rel_path for image in images] == [
      '00000001/0.jpg', '00000001/1.jpg', '00000001/2.jpg', '00000002/0.jpg', '00000002/1.jpg']
  assert [image.is_fake for image in images] == [0, 0, 1, 0, 0]
  assert images[3].person_id == '00000002'
  assert images[3].path == tmp_path / 'train/images/00000002/0.jpg'


def test_list_test_pairs_sorted(tmp_path):
  _write_layout(tmp_path)
  pairs = challenge.list_test_pairs(tmp_path)
  assert [pair.pair_id for pair in pairs] == ['00000000', '00000001']
  assert pairs[1].path0 == tmp_path / 'test_public/00000001/0.jpg'
  assert pairs[1].path1 == tmp_path / 'test_public/00000001/1.jpg'


def test_test_only_folder_has_no_train_images(tmp_path):
  (tmp_path / 'test_public/00000000').mkdir(parents=True)
  assert challenge.read_meta(tmp_path) == {}
  assert challenge.list_train_images(tmp_path) == []
  assert challenge.list_test_pairs(tmp_path)[0].pair_id == '00000000'
  assert challenge.list_test_pairs(tmp_path / 'nowhere') == []


@pytest.mark.parametrize('text, match', [
    ('{"a/0.jpg": 0,', 'malformed JSON'),
    ('[1, 2]', 'expected a JSON object'),
    ('{"a/0.jpg": 2}', "value 2"),
    ('{"a/0.jpg": "1"}', "value '1'"),
])
def test_read_meta_errors_name_the_file(tmp_path, text, match):
  (tmp_path / 'train').mkdir()
  (tmp_path / 'train/meta.json').write_text(text)
  with pytest.raises(challenge.DataFormatError, match=match) as info:
    challenge.read_meta(tmp_path)
  assert str(info.value).startswith(str(tmp_path / 'train/meta.json'))
  assert isinstance(info.value, ValueError)


def test_read_meta_missing_file(tmp_path):
  (tmp_path / 'train/images').mkdir(parents=True)
  with pytest.raises(challenge.DataFormatError, match='missing'):
    challenge.read_meta(tmp_path)


def test_read_labels_with_and_without_header(tmp_path):
  (tmp_path / 'a.csv').write_text('pair_id,label,kind\n00000000,1,same\n00000001,0,own_fake\n00000002,0,\n')
  (tmp_path / 'b.csv').write_text('00000000,1\n7,0\n')
  labels = challenge.read_labels(tmp_path / 'a.csv')
  assert labels == {'00000000': challenge.PairLabel(1, 'same'), '00000001': challenge.PairLabel(0, 'own_fake'),
                    '00000002': challenge.PairLabel(0, None)}
  # Leading zeros stripped by a spreadsheet come back.
  assert challenge.read_labels(tmp_path / 'b.csv') == {'00000000': challenge.PairLabel(1, None),
                                                       '00000007': challenge.PairLabel(0, None)}
  assert challenge.default_labels_path(tmp_path) == tmp_path / 'labels.csv'


@pytest.mark.parametrize('text, match', [
    ('pair_id,label\n00000000,2\n', 'label'),
    ('00000000\n', 'expected pair_id,label'),
    ('00000000,1\n00000000,0\n', 'twice'),
])
def test_read_labels_errors(tmp_path, text, match):
  (tmp_path / 'labels.csv').write_text(text)
  with pytest.raises(challenge.DataFormatError, match=match) as info:
    challenge.read_labels(tmp_path / 'labels.csv')
  assert str(info.value).startswith(str(tmp_path / 'labels.csv'))
  with pytest.raises(challenge.DataFormatError, match='cannot read'):
    challenge.read_labels(tmp_path / 'nope.csv')


def _png_16_bit(pixels: np.ndarray, colour_type: int) -> bytes:
  """A 16-bit PNG written by hand (Pillow cannot write 16-bit colour): colour type 2 RGB, 4 grey+alpha, 6 RGBA."""
  height, width = pixels.shape[:2]
  raw = b''.join(b'\x00' + pixels[row].astype('>u2').tobytes() for row in range(height))

  def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff)
  header = struct.pack('>IIBBBBB', width, height, 16, colour_type, 0, 0, 0)
  return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b'')


def test_16_bit_colour_pngs(tmp_path):
  rgb = np.zeros((4, 4, 3), np.uint16)
  rgb[..., 0], rgb[..., 1], rgb[..., 2] = 65535, 32768, 257
  np.testing.assert_array_equal(challenge.decode_rgb(_png_16_bit(rgb, 2), 'rgb16.png')[0, 0], (255, 128, 1))
  rgba = np.concatenate([rgb, np.full((4, 4, 1), 65535, np.uint16)], axis=-1)
  rgba[:2, :, 3] = 0
  decoded = challenge.decode_rgb(_png_16_bit(rgba, 6), 'rgba16.png')
  np.testing.assert_array_equal(decoded[0, 0], (0, 0, 0))
  np.testing.assert_array_equal(decoded[3, 0], (255, 128, 1))
  grey_alpha = np.stack([np.full((4, 4), 40000), np.full((4, 4), 65535)], axis=-1).astype(np.uint16)
  np.testing.assert_array_equal(challenge.decode_rgb(_png_16_bit(grey_alpha, 4), 'la16.png')[0, 0], (156, 156, 156))


def test_read_labels_rejects_what_check_reports(tmp_path):
  """One parser: readers raise on the first problem (counting the rest), check gets every one."""
  path = tmp_path / 'labels.csv'
  path.write_text('pair_id,label,kind\n00000000,1,stranger?\n00000001,0,same\n00000002,1,same\n00000003,0,fake\n')
  with pytest.raises(challenge.DataFormatError, match=r"line 2: pair 00000000 has kind 'stranger\?', not a name.*and 1 "
                     r"more"):
    challenge.read_labels(path)
  labels, problems = challenge.parse_labels(path.read_text(), 'labels.csv', pair_ids={'00000000', '00000001',
                                                                                       '00000002'})
  assert labels == {'00000002': challenge.PairLabel(1, 'same')}
  assert [p.split(': ', 2)[1] for p in problems] == ['line 2', 'line 3', 'line 5']
  assert 'of kind same has label 0, expected 1' in problems[1] and 'no folder in test_public/' in problems[2]
  assert all(p.startswith('labels.csv: line ') and p.endswith(')') for p in problems)


def test_a_labels_file_may_name_kinds_of_its_own_with_either_label(tmp_path):
  path = tmp_path / 'labels.csv'
  path.write_text('pair_id,label,kind\n00000000,0,fake_diffusion\n00000001,1,same-glasses\n00000002,0,different\n')
  assert challenge.read_labels(path) == {'00000000': challenge.PairLabel(0, 'fake_diffusion'),
                                         '00000001': challenge.PairLabel(1, 'same-glasses'),
                                         '00000002': challenge.PairLabel(0, 'different')}
  # The five known kinds keep their meaning: their label is fixed.
  path.write_text('00000000,1,own_fake\n')
  with pytest.raises(challenge.DataFormatError, match='of kind own_fake has label 1, expected 0'):
    challenge.read_labels(path)


def test_read_photo_bounds_the_longest_side(tmp_path):
  Image.new('RGB', (3000, 1500), (90, 140, 200)).save(tmp_path / 'big.jpg', quality=90)
  Image.new('RGB', (300, 150), (90, 140, 200)).save(tmp_path / 'big.png')
  for name, stored in (('big.jpg', (1500, 3000)), ('big.png', (150, 300))):
    photo, shape = challenge.read_photo(tmp_path / name, max_side=200)
    assert shape == stored and max(photo.shape[:2]) <= 200 and photo.dtype == np.uint8
    assert abs(photo.shape[1] - 2 * photo.shape[0]) <= 1
    assert np.abs(photo.astype(int) - (90, 140, 200)).max() <= 3
  small, shape = challenge.read_photo(tmp_path / 'big.png', max_side=2048)
  assert small.shape == (150, 300, 3) and shape == (150, 300)
  (tmp_path / 'cut.jpg').write_bytes((tmp_path / 'big.jpg').read_bytes()[:400])
  with pytest.raises(challenge.ImageReadError, match='cut.jpg: cannot decode image, truncated or corrupt'):
    challenge.read_photo(tmp_path / 'cut.jpg', max_side=200)
  with pytest.raises(challenge.ImageReadError, match='nope.jpg: no such file'):
    challenge.read_photo(tmp_path / 'nope.jpg', max_side=200)
