"""Plays a file through the engine with audio passthrough to the default output, in its own process."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(ckpt: str, photo: str, speech: str, delay_ms: int) -> None:
    from realtime.avatar import AvatarConfig, load_avatar
    from realtime.engine import Engine
    from realtime.generator import RuntimeConfig, load_generator
    from realtime.sinks.audio_out import AudioOutSink
    from realtime.sinks.base import NullSink
    from realtime.sources.file import FileSource

    gen = load_generator(ckpt, RuntimeConfig(runtime="openvino", precision="int8"), split=True)
    avatar = load_avatar(AvatarConfig(photo))
    avatar.attach_features(gen, "passthrough-test")
    out = AudioOutSink(delay_ms)
    summary = Engine(avatar, gen, [NullSink(), out]).run(FileSource(speech))
    print(json.dumps({"frames": summary["frames"], "underruns": out.underruns, "overruns": out.overruns}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
