"""Wav2Lip core, the bottom layer: networks, checkpoint loading, mel features, the generator's
input format (face_input), face boxes and detection, the cache folder.

Importing this package is cheap and torch-free; only the network modules (`models.wav2lip`,
`models.syncnet`, `models.disc`, `models.layers`, `models.checkpoint`, `models.torch_generator`)
import torch.
"""
