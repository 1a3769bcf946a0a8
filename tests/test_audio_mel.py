import numpy as np
import pytest

import media
from mediaio.audio import decode_audio
from models import mel as M
from models.errors import LipsyncError


def straightforward_mel(wav):
    """An independent computation with librosa and scipy, as the original repo did it."""
    import librosa
    import scipy.signal

    y = scipy.signal.lfilter([1, -0.97], [1], wav)
    spec = np.abs(librosa.stft(y, n_fft=800, hop_length=200, win_length=800, center=True, pad_mode="reflect"))
    basis = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)
    db = 20 * np.log10(np.maximum(1e-5, basis @ spec)) - 20
    return np.clip(8 * (db + 100) / 100 - 4, -4, 4)


def test_mel_matches_straightforward_computation(speech_wav):
    wav = decode_audio(speech_wav).mono_16k()
    ours = M.melspectrogram(wav)
    ref = straightforward_mel(wav)
    assert ours.shape == ref.shape == (80, 1 + len(wav) // 200)
    assert np.abs(ours - ref).max() < 1e-4
    assert ours.std() > 0.5  # speech, not silence: the comparison means something


def test_edge_frames_use_reflect_padding(speech_wav):
    """Zero padding (newer librosa's default) changes the first and last frames; we must not."""
    import librosa

    wav = decode_audio(speech_wav).mono_16k()
    ours = M.melspectrogram(wav)
    y = M.preemphasize(wav)
    zero = np.abs(librosa.stft(y, n_fft=800, hop_length=200, center=True, pad_mode="constant"))
    basis = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)
    zdb = np.clip(8 * (20 * np.log10(np.maximum(1e-5, basis @ zero)) - 20 + 100) / 100 - 4, -4, 4)
    assert np.abs(ours[:, 2:-2] - zdb[:, 2:-2]).max() < 1e-4
    assert np.abs(ours[:, 0] - zdb[:, 0]).max() > 1e-3


@pytest.mark.parametrize(
    "suffix,rate,channels",
    [(".wav", 16000, 1), (".mp3", 22050, 1), (".m4a", 44100, 2), (".ogg", 48000, 1), (".flac", 8000, 2)],
)
def test_any_container_decodes_to_16k_mono(tmp_path, speech_wav, suffix, rate, channels):
    src = decode_audio(speech_wav)
    import soxr

    pcm = soxr.resample(src.pcm[0], 16000, rate)[None].repeat(channels, 0)
    path = media.write_audio(tmp_path / f"s{suffix}", pcm, rate)
    dec = decode_audio(path)
    mono = dec.mono_16k()
    assert mono.dtype == np.float32 and mono.ndim == 1
    # Lossy codecs add priming/padding samples; the duration must still agree to ~50 ms.
    assert abs(len(mono) / 16000 - src.duration_s) < 0.05
    n = min(len(mono), len(src.pcm[0]))
    if suffix in (".wav", ".flac"):
        corr = np.corrcoef(mono[:n], src.pcm[0][:n])[0, 1]
        assert corr > 0.99


def test_audio_track_of_a_video(tmp_path, speech_wav):
    import av

    src = decode_audio(speech_wav)
    path = tmp_path / "talk.mp4"
    from realtime.sinks.file import VideoFileWriter

    with VideoFileWriter(path, 64, 64, 25, src.pcm, src.sample_rate_hz) as w:
        for _ in range(10):
            w.write(np.zeros((64, 64, 3), np.uint8))
    dec = decode_audio(path)
    assert abs(dec.duration_s - src.duration_s) < 0.05
    with av.open(str(path)) as c:
        assert c.streams.video and c.streams.audio


def reference_chunks(mel, fps):
    """The reference tool's loop, verbatim in behaviour."""
    chunks, i, mult = [], 0, 80.0 / fps
    while True:
        start = int(i * mult)
        if start + 16 > len(mel[0]):
            chunks.append(mel[:, len(mel[0]) - 16 :])
            break
        chunks.append(mel[:, start : start + 16])
        i += 1
    return chunks


@pytest.mark.parametrize("fps", [25, 30, 29.97, 24, 60])
@pytest.mark.parametrize("length", [16, 17, 100, 321, 1001])
def test_chunks_match_reference_loop(fps, length):
    mel = np.random.default_rng(length).standard_normal((80, length)).astype(np.float32)
    ours, ref = M.mel_chunks(mel, fps), reference_chunks(mel, fps)
    assert len(ours) == len(ref)
    assert all(np.array_equal(a, b) for a, b in zip(ours, ref))


def test_training_alignment_offset_shifts_one_frame():
    mel = np.arange(80 * 400, dtype=np.float32).reshape(80, 400)
    plain, shifted = M.mel_chunks(mel, 25), M.mel_chunks(mel, 25, offset_frames=-1)
    assert np.array_equal(shifted[0], plain[0])  # clamped at the start of the audio
    assert np.array_equal(shifted[10], plain[9])


def test_bad_audio_inputs(tmp_path, photo):
    with pytest.raises(LipsyncError, match="no such file"):
        decode_audio(tmp_path / "missing.wav")
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(LipsyncError, match="cannot decode|audio stream"):
        decode_audio(junk)
    with pytest.raises(LipsyncError, match="audio stream"):
        decode_audio(photo)
    with pytest.raises(LipsyncError, match="at least"):
        M.mel_chunks(np.zeros((80, 10), np.float32), 25)
