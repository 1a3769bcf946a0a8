"""A LiveKit voice agent whose avatar runs as its own participant (another process, or a GPU box).

    pip install 'lipsync-rt[livekit]' livekit-plugins-openai   # or any STT/LLM/TTS plugins
    LIVEKIT_URL=... LIVEKIT_API_KEY=... LIVEKIT_API_SECRET=... OPENAI_API_KEY=... \
        python examples/livekit_remote_avatar.py dev

The agent mints the avatar's token (kind agent, publishing on behalf of the agent) and launches
the worker, here as a child process running this file with `avatar-worker`; in production
`launch` would ask your avatar hosts to start one with that url and token. The agent's audio
reaches the worker over LiveKit data streams once the avatar's video is published; the room
sees the avatar's video and voice as the agent's.
"""

import asyncio
import os
import sys

from livekit.agents import Agent, AgentSession, JobContext, WorkerOptions, cli

from lipsync.integrations.livekit import LipsyncRemoteAvatarSession, connect_avatar_worker

AVATAR = "media/avatar.jpg"
CHECKPOINT = None  # checkpoints/wav2lip_gan.pth when you have it; None: Wav2Lip if present, else procedural
_workers: list[asyncio.subprocess.Process] = []


async def launch(url: str, token: str) -> None:
    # The token goes in the environment, not the command line (which other users can read).
    env = {**os.environ, "LIPSYNC_LIVEKIT_URL": url, "LIPSYNC_LIVEKIT_TOKEN": token}
    _workers.append(await asyncio.create_subprocess_exec(sys.executable, __file__, "avatar-worker", env=env))


async def entrypoint(ctx: JobContext):
    from livekit.plugins import openai  # the plugins are your choice; none is needed by the avatar

    await ctx.connect()
    session = AgentSession(stt=openai.STT(), llm=openai.LLM(), tts=openai.TTS())
    avatar = LipsyncRemoteAvatarSession(launch)
    await avatar.start(session, ctx.room)  # before session.start(): its audio goes to the worker
    ctx.add_shutdown_callback(_stop_workers)
    await session.start(agent=Agent(instructions="You are a friendly assistant with a face."), room=ctx.room)
    await avatar.wait_for_join(timeout=60)  # the first export of a checkpoint can take a while
    await session.generate_reply(instructions="Greet the user.")


async def _stop_workers() -> None:
    for p in _workers:
        if p.returncode is None:
            p.terminate()
            await p.wait()


async def avatar_worker() -> None:
    worker = await connect_avatar_worker(
        os.environ["LIPSYNC_LIVEKIT_URL"], os.environ["LIPSYNC_LIVEKIT_TOKEN"], AVATAR, CHECKPOINT
    )
    try:
        await worker.runner.wait_for_complete()  # until the agent's audio stream ends
    finally:
        await worker.aclose()


if __name__ == "__main__":
    if sys.argv[1:] == ["avatar-worker"]:
        asyncio.run(avatar_worker())
    else:
        cli.run_app(WorkerOptions(entrypoint_fnc=entrypoint))
