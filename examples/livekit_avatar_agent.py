"""A LiveKit voice agent whose face is this engine's avatar (in-process).

    pip install 'lipsync-rt[livekit]' livekit-plugins-openai   # or any STT/LLM/TTS plugins
    LIVEKIT_URL=... LIVEKIT_API_KEY=... LIVEKIT_API_SECRET=... OPENAI_API_KEY=... \
        python examples/livekit_avatar_agent.py dev

Open the room in LiveKit's Agents Playground: the avatar talks with the agent's voice, idles while
it listens, and stops mid-sentence when you interrupt.
"""

from livekit.agents import Agent, AgentSession, JobContext, WorkerOptions, cli

from lipsync.integrations.livekit import LipsyncAvatarSession

AVATAR = "media/avatar.jpg"
CHECKPOINT = None  # checkpoints/wav2lip_gan.pth when you have it; None: Wav2Lip if present, else procedural


async def entrypoint(ctx: JobContext):
    from livekit.plugins import openai  # the plugins are your choice; none is needed by the avatar

    await ctx.connect()
    session = AgentSession(stt=openai.STT(), llm=openai.LLM(), tts=openai.TTS())
    avatar = LipsyncAvatarSession(avatar=AVATAR, checkpoint=CHECKPOINT)
    await avatar.start(session, ctx.room)  # before session.start(): its audio goes to the avatar (closed at shutdown)
    await session.start(agent=Agent(instructions="You are a friendly assistant with a face."), room=ctx.room)
    await session.generate_reply(instructions="Greet the user.")


if __name__ == "__main__":
    cli.run_app(WorkerOptions(entrypoint_fnc=entrypoint))
