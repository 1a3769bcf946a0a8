"""The classic command end to end: parity with the reference steps, formats, and bad input."""

import subprocess
import sys

import av
import cv2
import numpy as np
import pytest
import torch

import inference
import media
from conftest import ROOT


def reference_frames(ckpt, photo_path, audio_path, box, fps=25.0):
    """The reference tool's steps written out plainly, for a still image and a fixed --box."""
    from mediaio.audio import decode_audio
    from models.mel import melspectrogram
    from models.wav2lip import Wav2Lip
    from test_audio_mel import reference_chunks

    state = torch.load(ckpt, weights_only=True)["state_dict"]
    net = Wav2Lip()
    net.load_state_dict({k.replace("module.", ""): v for k, v in state.items()})
    net.eval()
    chunks = reference_chunks(melspectrogram(decode_audio(audio_path).mono_16k()), fps)
    frame = cv2.imread(str(photo_path))
    y1, y2, x1, x2 = box
    face = cv2.resize(frame[y1:y2, x1:x2], (96, 96))
    out = []
    for start in range(0, len(chunks), 32):
        mels = np.stack(chunks[start : start + 32])
        faces = np.stack([face] * len(mels))
        masked = faces.copy()
        masked[:, 48:] = 0
        img = np.concatenate((masked, faces), axis=3) / 255.0
        with torch.no_grad():
            pred = net(torch.FloatTensor(mels[:, None]), torch.FloatTensor(img.transpose(0, 3, 1, 2)))
        for p in pred.numpy().transpose(0, 2, 3, 1) * 255.0:
            f = frame.copy()
            f[y1:y2, x1:x2] = cv2.resize(p.astype(np.uint8), (x2 - x1, y2 - y1))
            out.append(f)
    return out


def decode_video(path):
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]
        streams = {s.type: s.codec_context.name for s in c.streams}
        duration = c.duration / 1e6
    return frames, streams, duration


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_box_render_matches_reference_frame_for_frame(tmp_path, generator_ckpt, photo, speech_wav, backend):
    box = media.ASTRONAUT_FACE_BOX
    out = tmp_path / "out.mkv"
    rc = inference.main(
        [
            "--checkpoint_path",
            str(generator_ckpt),
            "--face",
            str(photo),
            "--audio",
            str(speech_wav),
            "--outfile",
            str(out),
            "--box",
            *map(str, box),
            "--quiet",
            "--backend",
            backend,
        ]
    )
    assert rc == 0
    frames, streams, _ = decode_video(out)
    expected = reference_frames(generator_ckpt, photo, speech_wav, box)
    assert len(frames) == len(expected)
    assert streams == {"video": "ffv1", "audio": "flac"}
    for got, want in zip(frames, expected):
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    # The generated region changes with the audio (the test is not comparing static images).
    y1, y2, x1, x2 = box
    mouth = np.stack([f[y1 + (y2 - y1) // 2 : y2, x1:x2] for f in frames]).astype(float)
    assert mouth.std(axis=0).mean() > 1.0


def test_classic_command_writes_h264_aac_mp4(tmp_path, generator_ckpt, photo, speech_mp3):
    out = tmp_path / "results" / "ii.mp4"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "inference.py"),
            "--checkpoint_path",
            str(generator_ckpt),
            "--face",
            str(photo),
            "--audio",
            str(speech_mp3),
            "--outfile",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    frames, streams, duration = decode_video(out)
    assert streams == {"video": "h264", "audio": "aac"}
    from mediaio.audio import decode_audio

    audio_s = decode_audio(speech_mp3).duration_s
    assert abs(duration - audio_s) <= 1 / 25
    assert frames[0].shape == cv2.imread(str(photo)).shape
    assert [p.name for p in out.parent.iterdir()] == ["ii.mp4"]


def test_detected_boxes_drive_the_render(tmp_path, generator_ckpt, photo, speech_wav):
    from lipsync.offline import RenderOptions, render
    from models.torch_generator import TorchGenerator

    res = render(
        str(photo),
        str(speech_wav),
        str(tmp_path / "d.mkv"),
        TorchGenerator(str(generator_ckpt)),
        RenderOptions(progress=False),
    )
    y1, y2, x1, x2 = res.boxes[0]
    assert 60 < y1 < 100 and 170 < y2 < 200 and 160 < x1 < 190 and 255 < x2 < 285
    frames, _, _ = decode_video(tmp_path / "d.mkv")
    original = cv2.imread(str(photo))
    changed = np.any(frames[3] != original, axis=2)
    ys, xs = np.nonzero(changed)
    assert ys.min() >= y1 and ys.max() < y2 and xs.min() >= x1 and xs.max() < x2


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, photo, speech_wav, generator_ckpt):
    from synthetic import make_checkpoint

    d = tmp_path_factory.mktemp("bad")
    gradient = np.tile(np.linspace(0, 255, 320, dtype=np.uint8)[None, :, None], (240, 1, 3))
    cv2.imwrite(str(d / "noface.png"), gradient)
    junk = d / "corrupt.mp3"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 8000, dtype=np.uint8).tobytes())
    media.video_only(d / "silent.mp4", [cv2.imread(str(photo))] * 5)
    make_checkpoint(d / "lipsync_expert.pth", "SyncNet_color")
    data = generator_ckpt.read_bytes()
    (d / "truncated.pth").write_bytes(data[: len(data) // 3])

    class Evil:
        def __reduce__(self):
            return (open, (str(d / "pwned"), "w"))

    torch.save({"state_dict": {"x": Evil()}}, d / "evil.pth")
    return d


@pytest.mark.parametrize(
    "case,args,says",
    [
        ("missing face", dict(face="nothing.jpg"), "no such file"),
        ("missing audio", dict(audio="nothing.wav"), "no such file"),
        ("no audio stream", dict(audio="{bad}/silent.mp4"), "audio stream"),
        ("corrupt audio", dict(audio="{bad}/corrupt.mp3"), "cannot decode"),
        ("no face", dict(face="{bad}/noface.png"), "no face in frame 0"),
        ("syncnet as generator", dict(ckpt="{bad}/lipsync_expert.pth"), "SyncNet"),
        ("truncated checkpoint", dict(ckpt="{bad}/truncated.pth"), "truncated or corrupt"),
        ("code in pickle", dict(ckpt="{bad}/evil.pth"), "would run code"),
        ("unknown output type", dict(out="out.avi"), ".mp4"),
    ],
)
def test_bad_input_gives_one_line_and_no_output(
    tmp_path, bad_inputs, generator_ckpt, photo, speech_wav, case, args, says
):
    fill = lambda s: s.format(bad=bad_inputs)  # noqa: E731
    outdir = tmp_path / "results"
    cmd = [
        sys.executable,
        str(ROOT / "inference.py"),
        "--checkpoint_path",
        fill(args.get("ckpt", str(generator_ckpt))),
        "--face",
        fill(args.get("face", str(photo))),
        "--audio",
        fill(args.get("audio", str(speech_wav))),
        "--outfile",
        str(outdir / args.get("out", "out.mp4")),
        "--quiet",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and says in lines[0]
    assert "expected" in lines[0] and "found" in lines[0]
    assert not outdir.exists() or not any(outdir.iterdir())
    assert not (bad_inputs / "pwned").exists()
