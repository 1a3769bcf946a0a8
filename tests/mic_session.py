"""A live session from the default microphone, run in its own process (PortAudio reads the
audio server's address from the environment once, at import)."""

import json
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(ckpt: str, photo: str, out_mkv: str, seconds: float) -> None:
    from realtime.avatar import AvatarConfig, load_avatar
    from realtime.engine import Engine
    from realtime.generator import RuntimeConfig, load_generator
    from realtime.sinks.recorder import FileSink
    from realtime.sources.mic import MicSource

    gen = load_generator(ckpt, RuntimeConfig(runtime="openvino", precision="int8"), split=True)
    avatar = load_avatar(AvatarConfig(photo))
    avatar.attach_features(gen, "mic-test")
    mic = MicSource()
    engine = Engine(avatar, gen, [FileSink(out_mkv, 25)])

    def announce():
        mic.started.wait()
        print("capturing", flush=True)

    threading.Thread(target=announce, daemon=True).start()
    summary = engine.run(mic, seconds)
    summary["source"] = mic.name
    summary["overflows"] = mic.overflows
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]))
