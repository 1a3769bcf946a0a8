import json
from pathlib import Path

import pytest
import torch

from models.checkpoint import identify, load_network, load_torch_generator, read_state_dict
from models.errors import LipsyncError
from synthetic import make_checkpoint

SPEC = Path(__file__).resolve().parents[2] / "shared" / "spec" / "checkpoint-keys.json"


@pytest.mark.parametrize("name", ["Wav2Lip", "Wav2Lip_disc_qual", "SyncNet_color"])
def test_state_dict_matches_official_key_list(name):
    if not SPEC.is_file():
        pytest.skip("shared/spec/checkpoint-keys.json is not beside this checkout")
    from models.checkpoint import _network

    expected = json.loads(SPEC.read_text())[name]
    got = {k: list(v.shape) for k, v in _network(name).state_dict().items()}
    assert got == expected


def test_generator_parameter_count():
    from models.wav2lip import Wav2Lip

    assert sum(p.numel() for p in Wav2Lip().parameters()) == 36_298_035  # the spec's count


@pytest.mark.parametrize(
    "variant",
    [
        dict(),  # official: {"state_dict": {"module.*": ...}, "optimizer": ..., ...}
        dict(prefix=""),  # official layout, prefix already stripped
        dict(bare=True),  # a bare state dict with module. keys
        dict(bare=True, prefix=""),
        dict(legacy_format=True),  # the pre-zip pickle format the 2020 files were saved in
    ],
)
def test_every_checkpoint_shape_loads_strictly(tmp_path, variant):
    path = tmp_path / "g.pth"
    ref = make_checkpoint(path, "Wav2Lip", seed=3, **variant)
    net = load_torch_generator(path)
    for k, v in ref.state_dict().items():
        assert torch.equal(net.state_dict()[k], v), k
    assert not net.training


def test_official_dict_really_has_official_fields(tmp_path):
    path = tmp_path / "g.pth"
    make_checkpoint(path, "Wav2Lip")
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"state_dict", "optimizer", "global_step", "global_epoch"}
    assert all(k.startswith("module.") for k in raw["state_dict"])


@pytest.mark.parametrize("name", ["SyncNet_color", "Wav2Lip_disc_qual"])
def test_other_networks_load_and_are_identified(tmp_path, name):
    path = tmp_path / "n.pth"
    make_checkpoint(path, name)
    assert identify(read_state_dict(path)) == name
    load_network(path, name)


def test_syncnet_given_as_generator_is_named(tmp_path):
    path = tmp_path / "lipsync_expert.pth"
    make_checkpoint(path, "SyncNet_color")
    with pytest.raises(LipsyncError) as e:
        load_torch_generator(path)
    msg = str(e.value)
    assert "SyncNet" in msg and "Wav2Lip generator" in msg and "\n" not in msg


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "g.pth"
    make_checkpoint(path, "Wav2Lip")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(LipsyncError, match="truncated or corrupt"):
        load_torch_generator(path)


class _RunsCodeOnLoad:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_that_runs_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"x": _RunsCodeOnLoad(str(marker))}}, path)
    with pytest.raises(LipsyncError, match="would run code"):
        load_torch_generator(path)
    assert not marker.exists()


def test_missing_and_non_tensor_files(tmp_path):
    with pytest.raises(LipsyncError, match="no such file"):
        load_torch_generator(tmp_path / "nope.pth")
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(LipsyncError, match="dict of tensors"):
        load_torch_generator(path)
