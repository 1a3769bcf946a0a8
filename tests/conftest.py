import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import media  # noqa: E402

SPEECH = "The quick brown fox jumps over the lazy dog. Then it sits down by the river and watches the boats go by."


@pytest.fixture(scope="session")
def assets(tmp_path_factory):
    d = tmp_path_factory.mktemp("assets")
    return d


@pytest.fixture(scope="session")
def photo(assets):
    return media.face_photo(assets / "face.jpg")


@pytest.fixture(scope="session")
def speech_wav(assets):
    return media.speech_wav(assets / "speech.wav", SPEECH)


@pytest.fixture(scope="session")
def speech_mp3(assets, speech_wav):
    from mediaio.audio import decode_audio

    dec = decode_audio(speech_wav)
    return media.write_audio(assets / "speech.mp3", dec.pcm, dec.sample_rate_hz)


@pytest.fixture(scope="session")
def generator_ckpt(assets, photo, speech_wav):
    path = assets / "wav2lip_gan.pth"
    media_batches = media.calibration_batches(photo, speech_wav)
    from synthetic import make_checkpoint

    make_checkpoint(path, "Wav2Lip", seed=1, calibration=media_batches)
    return path


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """Every test session gets its own lipsync cache (detections, exports, avatars)."""
    return tmp_path_factory.mktemp("lipsync-cache")


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(cache_dir):
    """Session-wide, so that module- and session-scoped fixtures also export into it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIPSYNC_CACHE_DIR", str(cache_dir))
        yield


@pytest.fixture(autouse=True)
def _forget_test_camera_backends():
    """pyvirtualcam's backend registry is process-wide and its default tries every entry: a test
    backend left behind would answer another test's `VcamSink` in place of v4l2loopback."""
    mod = sys.modules.get("pyvirtualcam.camera")
    before = dict(mod.BACKENDS) if mod else None
    yield
    mod = sys.modules.get("pyvirtualcam.camera")
    if mod is not None:
        # Imported during the test: pyvirtualcam's own backends are those not named by a test.
        # (Read before clearing: clearing first left an empty registry, so a later test asking
        # for v4l2loopback got a KeyError instead of the missing device.)
        keep = before if before is not None else {k: v for k, v in mod.BACKENDS.items() if not k.startswith("lipsync-")}
        mod.BACKENDS.clear()
        mod.BACKENDS.update(keep)


@pytest.fixture(scope="session")
def judge_inputs(assets):
    """Faces and a voice that no calibration or gate in the product (export.samples) and no test
    checkpoint's BatchNorm statistics (the photo and speech above) use: 24 LFW faces (other people;
    25x25 grey, upscaled and tinted) and a female espeak-ng voice. For judging reduced precision."""
    import cv2
    from skimage.data import lfw_subset

    from mediaio.audio import decode_audio
    from models.face_input import model_faces, model_mels
    from models.mel import mel_chunks, melspectrogram

    faces = lfw_subset()[:24]
    rng = np.random.default_rng(5)
    crops = []
    for f in faces:
        grey = cv2.resize((f * 255).astype(np.uint8), (96, 96), interpolation=cv2.INTER_CUBIC)
        tint = rng.uniform(0.8, 1.15, 3)
        crops.append(np.clip(np.repeat(grey[..., None], 3, axis=2) * tint, 0, 255).astype(np.uint8))
    wav = media.speech_wav(
        assets / "judge-voice.wav",
        "Seven silver swans swam south, singing softly while the shepherd counted sheep beside the shallow stream.",
        voice="en-us+f4",
    )
    chunks = [c for c in mel_chunks(melspectrogram(decode_audio(wav).mono_16k()), 25) if c.mean() > -2.5]
    mels = model_mels([chunks[i] for i in rng.integers(0, len(chunks), len(crops))])
    return mels, model_faces(np.stack(crops))
