"""The data section of a training config, without TensorFlow: configs load it, so loading a config (and
reporting a bad override) does not start TensorFlow, whose start-up lines would reach stderr."""
import ml_collections


def default_data_config() -> ml_collections.ConfigDict:
  """The data section of a training config (`config.data`); the global batch size is `config.batch_size`."""
  c = ml_collections.ConfigDict()
  c.tfds_dir = ''          # TFDS data_dir holding jaxface_faces (written by scripts/preprocess.py)
  c.fake_share = 0.25      # share of fakes per batch, recorded + pseudo; None = natural share of recorded fakes
  c.shuffle_buffer = 10_000  # encoded examples per stream (about 5 kB each)
  c.parallel_calls = -1    # tf.data.AUTOTUNE
  c.prefetch = 2           # batches
  c.num_shards = 0         # slices of the train split, each its own stream; 0 = one per process

  a = c.augment = ml_collections.ConfigDict()
  a.flip = 0.5
  a.shift = 0.5            # whole-pixel shift, no resampling: keeps fake traces
  a.crop_scale = 0.2       # scale, shift and rotate with bilinear resampling: blurs 1-2 pixel traces, so rarer
  a.max_scale = 0.08       # scale in [1 - max_scale, 1 + max_scale]
  a.max_shift = 0.05       # shift up to this fraction of the image side (both shifts)
  a.max_angle = 5.0        # degrees
  a.color = 0.5
  a.brightness = 0.12      # additive, fraction of full range
  a.contrast = 0.15
  a.saturation = 0.2
  a.hue = 0.02
  a.blur = 0.1
  a.blur_sigma = (0.3, 1.2)   # pixels of a 112 crop
  a.downscale = 0.1
  a.min_downscale = 0.6
  a.jpeg = 0.2
  a.jpeg_quality = (60, 95)
  a.fake_degrade_scale = 1.0  # multiplies the blur, downscale and jpeg probabilities for fakes

  p = c.pseudo_fakes = ml_collections.ConfigDict()
  p.share = 0.125          # share of the batch made of pseudo-fakes (part of fake_share)
  p.self_blend = 0.4       # relative probabilities of the kinds
  p.swap = 0.3
  p.trace = 0.3
  return c
