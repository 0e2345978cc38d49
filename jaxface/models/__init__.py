"""Flax models: IR-ResNet backbones, baselines, heads and the two-head face model."""
