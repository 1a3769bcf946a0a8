"""HD community checkpoints (256, 288, SAM): recognised by their tensors, loaded strictly, exported
and verified, and run offline and live with crops, rows and paste at the model's size.

The networks are checked against the published shapes (shared/spec/hd-layouts.md); the stand-in
checkpoints are random weights in the official on-disk format (tests/synthetic.py), calibrated on
the embedded photo so that outputs are not a saturated flat face.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.errors import LipsyncError
from models.layouts import Layout, detect, face_size_for
from synthetic import HD_LAYOUTS, make_checkpoint, make_embedded_calibrated_checkpoint

# Published facts (hd-layouts.md): parameters, the telling tensors, output size.
PARAMS_M = {"hd-256": 53.6, "hd-288": 48.5, "sam": 172.7}
TELLING = {
    "hd-256": {
        "face_encoder_blocks.7.0.conv_block.0.weight": (512, 512, 4, 4),
        "face_decoder_blocks.1.0.conv_block.0.weight": (1024, 512, 4, 4),
    },
    "hd-288": {"face_encoder_blocks.1.0.conv_block.0.weight": (32, 16, 5, 5)},
    "sam": {"sam.sa.conv1.weight": (1, 2, 7, 7), "audio_refine.1.conv_block.0.weight": (1024, 1024, 1, 1)},
}


@pytest.fixture(scope="module")
def hd_ckpts(tmp_path_factory):
    """layout -> (path, face size to run at), made on first use."""
    made: dict[str, tuple[str, int]] = {}
    root = tmp_path_factory.mktemp("hd")

    def get(layout: str) -> tuple[str, int]:
        if layout not in made:
            path = root / f"{layout}.pth"
            size_px = HD_LAYOUTS[layout]
            net = make_embedded_calibrated_checkpoint(path, seed=7, network=layout, face_size_px=size_px)
            made[layout] = (str(path), net.face_size)
            del net
        return made[layout]

    return get


@pytest.mark.parametrize("layout", ["hd-256", "hd-288", "sam"])
def test_networks_have_the_published_shapes(layout):
    from models.checkpoint import _network

    net = _network(layout, HD_LAYOUTS[layout])
    state = net.state_dict()
    assert round(sum(p.numel() for p in net.parameters()) / 1e6, 1) == PARAMS_M[layout]
    for key, shape in TELLING[layout].items():
        assert tuple(state[key].shape) == shape, key
    assert detect({k: tuple(v.shape) for k, v in state.items()}) is Layout(layout)
    n_blocks = {"hd-256": 8, "hd-288": 9, "sam": 8}[layout]
    assert len(net.face_encoder_blocks) == len(net.face_decoder_blocks) == n_blocks
    s = net.face_size
    with torch.no_grad():
        out = net.eval()(torch.zeros(1, 1, 80, 16), torch.zeros(1, 6, s, s))
    assert tuple(out.shape) == (1, 3, s, s)


def test_the_original_is_still_told_apart():
    from models.wav2lip import Wav2Lip

    shapes = {k: tuple(v.shape) for k, v in Wav2Lip().state_dict().items()}
    assert detect(shapes) is Layout.W96
    assert detect({"conv.weight": (3, 3, 1, 1)}) is None


def test_sam_runs_at_any_multiple_of_64_and_refuses_others():
    from models.wav2lip_hd import Wav2LipSAM

    assert face_size_for(Layout.SAM, 256) == 256
    for bad in (0, 200, 128):
        with pytest.raises(LipsyncError) as e:
            face_size_for(Layout.SAM, bad)
        assert "\n" not in str(e.value) and "--face_size" in str(e.value)
    with pytest.raises(LipsyncError, match="weights fix the size"):
        face_size_for(Layout.HD256, 384)
    net = Wav2LipSAM(256).eval()
    with torch.no_grad():
        assert net(torch.zeros(1, 1, 80, 16), torch.zeros(1, 6, 256, 256)).shape == (1, 3, 256, 256)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["hd-256", "hd-288", "sam"])
def test_stand_in_loads_strictly_and_row_cropped_decode_matches(hd_ckpts, layout):
    from export.samples import heldout_set
    from models.checkpoint import identify, load_torch_generator, read_state_dict

    path, size = hd_ckpts(layout)
    assert identify(read_state_dict(path)) == layout
    net = load_torch_generator(path, HD_LAYOUTS[layout])
    assert net.face_size == size and not net.training
    h = heldout_set(2, size=size)
    with torch.no_grad():
        feats = net.encode_face(torch.from_numpy(h.faces))
        mel = torch.from_numpy(h.mels)
        full = net.decode(mel, feats)
        assert float(full.std()) > 0.05  # not a flat (saturated) face: comparisons below mean something
        for first in (size // 2, size - 16, 8):
            rows = net.decode_rows(mel, feats, first)
            torch.testing.assert_close(rows, full[:, :, first:], atol=2e-5, rtol=0)


@pytest.mark.slow
def test_sam_needs_its_size_and_each_size_is_its_own_cache_entry(hd_ckpts):
    from export.cache import checkpoint_sha256
    from models.checkpoint import load_torch_generator

    path, _ = hd_ckpts("sam")
    with pytest.raises(LipsyncError) as e:
        load_torch_generator(path)
    msg = str(e.value)
    assert "\n" not in msg and "--face_size 384" in msg and "not store" in msg
    assert len({checkpoint_sha256(path), checkpoint_sha256(path, 192), checkpoint_sha256(path, 256)}) == 3


def test_a_fixed_size_checkpoint_refuses_another_size(tmp_path):
    from models.checkpoint import load_torch_generator

    path = tmp_path / "w96.pth"
    make_checkpoint(path, "Wav2Lip")
    with pytest.raises(LipsyncError, match="weights fix the size"):
        load_torch_generator(path, 384)


@pytest.mark.slow
@pytest.mark.timeout(900)  # SAM's graphs hold 690 MB of weights: minutes to export and verify on 2 busy cores
@pytest.mark.parametrize("layout", ["hd-256", "hd-288", "sam"])
def test_export_verifies_and_records_the_face_size(hd_ckpts, layout):
    import onnx

    from export.cache import ensure_exported
    from export.metadata import graph_face_size
    from realtime.generator import RuntimeConfig, SplitGenerator

    path, size = hd_ckpts(layout)
    cfg = RuntimeConfig(face_size_px=HD_LAYOUTS[layout])
    paths = ensure_exported(path, "split", first_row=size // 2, face_size_px=cfg.face_size_px)
    enc, dec = paths["face_encoder"], paths[f"decoder_r{size // 2}"]
    assert graph_face_size(enc) == graph_face_size(dec) == size
    n_skips = len(onnx.load(str(enc), load_external_data=False).graph.output)
    assert n_skips == {"hd-256": 8, "hd-288": 9, "sam": 8}[layout]
    gen = SplitGenerator(enc, dec, cfg, first_row=size // 2)
    out = gen(np.zeros((1, 1, 80, 16), np.float32), np.zeros((1, 6, size, size), np.float32))
    assert out.shape == (1, 3, size - size // 2, size)


@pytest.mark.slow
def test_int8_rewrite_handles_the_288_layouts_unpadded_upsampling(hd_ckpts):
    from export.rewrite import convtranspose_as_conv
    from export.samples import heldout_set
    from models.checkpoint import load_torch_generator

    path, size = hd_ckpts("hd-288")
    net = load_torch_generator(path)
    ops = {m.output_padding for m in net.modules() if isinstance(m, torch.nn.ConvTranspose2d) and m.stride[0] == 2}
    assert ops == {(0, 0), (1, 1)}  # both kinds are there to rewrite
    h = heldout_set(2, size=size)
    mel, face = torch.from_numpy(h.mels), torch.from_numpy(h.faces)
    with torch.no_grad():
        torch.testing.assert_close(convtranspose_as_conv(net)(mel, face), net(mel, face), atol=1e-4, rtol=0)


def test_rows_shown_scale_with_the_face_size():
    from realtime.compositor import ROW_QUANTUM, first_shown_row

    box = (100, 300, 150, 330)
    kps = np.array([[200, 160], [280, 160], [240, 210], [240, 250], [160, 180], [320, 180]], np.float32)
    r96, r256 = first_shown_row([box], [kps]), first_shown_row([box], [kps], 256)
    assert 0 < r96 < 96 and 0 < r256 < 256
    assert abs(r256 - r96 * 256 / 96) <= ROW_QUANTUM * 256 / 96 + 1


@pytest.fixture(scope="module")
def short_speech(tmp_path_factory, speech_wav):
    """The first 0.6 s of the test speech: HD generators cost 5-20x the original per frame."""
    import media
    from mediaio.audio import decode_audio

    dec = decode_audio(speech_wav)
    cut = dec.pcm[:, : int(0.6 * dec.sample_rate_hz)]
    return media.write_audio(tmp_path_factory.mktemp("short") / "speech.wav", cut, dec.sample_rate_hz)


@pytest.mark.slow
def test_offline_render_crops_and_pastes_at_the_model_size(hd_ckpts, tmp_path, photo, short_speech):
    import cv2

    import media
    from lipsync.render_command import main
    from mediaio.audio import decode_audio
    from models.face_input import crop_face, model_faces, model_mels
    from models.mel import mel_chunks, melspectrogram
    from models.torch_generator import TorchGenerator
    from realtime.compositor import paste_hard, to_uint8_faces

    path, size = hd_ckpts("hd-256")
    out = tmp_path / "hd.mkv"
    box = media.ASTRONAUT_FACE_BOX
    rc = main(
        ["--checkpoint_path", path, "--face", str(photo), "--audio", str(short_speech), "--outfile", str(out)]
        + ["--box", *map(str, box), "--quiet"]
    )
    assert rc == 0
    still = cv2.imread(str(photo))
    chunks = mel_chunks(melspectrogram(decode_audio(short_speech).mono_16k()), 25.0)
    with av_open(out) as f:
        frames = [fr.to_ndarray(format="bgr24") for fr in f.decode(video=0)]
    assert len(frames) == len(chunks) >= 10
    # The reference pipeline at 256: crop at the model's size, the torch generator, hard paste.
    ref = TorchGenerator(path)
    faces = to_uint8_faces(ref(model_mels(chunks[:3]), model_faces(crop_face(still, box, size)[None].repeat(3, 0))))
    for got, face in zip(frames, faces):
        want = paste_hard(still.copy(), face, box)
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 2


def av_open(path):
    import av

    return av.open(str(path))


def test_offline_sam_without_a_size_is_one_line(tmp_path, photo, short_speech, capsys, monkeypatch):
    from lipsync import render_command

    def refuse(args):
        from models.layouts import Layout, face_size_for

        return face_size_for(Layout.SAM, args.face_size)

    # The same check load_torch_generator makes on a SAM file (covered with a real file above),
    # here through the command's own error path without writing 700 MB.
    monkeypatch.setattr(render_command, "make_generator", refuse)
    rc = render_command.main(
        ["--checkpoint_path", str(photo), "--face", str(photo), "--audio", str(short_speech)]
        + ["--outfile", str(tmp_path / "x.mp4"), "--box", "60", "230", "150", "290", "--quiet"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--face_size 384" in err[0]
    assert not (tmp_path / "x.mp4").exists()


@pytest.mark.slow
@pytest.mark.timeout(900)  # exports an HD decoder and runs the (pinned) ladder: minutes on 2 busy cores
def test_live_renderer_runs_an_hd_checkpoint_at_its_size(hd_ckpts):
    from pathlib import Path

    from realtime.config import EngineConfig
    from realtime.generator import RuntimeConfig
    from realtime.live import build_renderer

    path, size = hd_ckpts("hd-256")
    avatar = str(Path(__file__).resolve().parent.parent / "media" / "avatar.jpg")
    runtime = RuntimeConfig(runtime="onnxruntime", precision="fp32", device="cpu")
    av, renderer = build_renderer(avatar, path, runtime, EngineConfig(blend="feather"))
    assert av.crops.shape[1:] == (size, size, 3) and av.cfg.face_size == size
    assert renderer.gen.face_size == size and renderer.gen.first_row > 0
    rng = np.random.default_rng(0)
    mel = rng.uniform(-4, 1, (80, 16)).astype(np.float32)
    frame = av.frames[0]
    out = renderer.render(frame, 0, mel, -1, 25.0)
    y1, y2, x1, x2 = av.boxes[0]
    changed = np.abs(out.astype(np.int16) - frame.astype(np.int16)).max(axis=2) > 0
    assert changed[y1:y2, x1:x2].mean() > 0.05  # the mouth region was replaced
    assert not changed[:y1].any() and not changed[y2:].any()  # nothing outside the face box
