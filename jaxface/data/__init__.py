"""Challenge data: reading, checking, generating, TFDS building and the tf.data pipeline."""
