"""Wav2Lip core: networks, checkpoint loading, audio features and face boxes.

Importing this package is cheap and torch-free; only the network modules
(`models.wav2lip`, `models.syncnet`, `models.disc`, `models.checkpoint`) import torch.
"""
