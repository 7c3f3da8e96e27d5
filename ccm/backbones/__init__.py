"""Encoders for the pose networks.

Every backbone exposes ``out_channels: tuple[int, int]`` and
``out_strides: tuple[int, int]`` and returns ``(penultimate_stage, last_stage)``
features from ``forward(x)`` for an ImageNet-normalised RGB input (N, 3, H, W).
"""
