"""Many avatars per process: one shared generator service, many live sessions over it."""

from realtime.service.generator_service import DROPPED, GeneratorService, ServiceConfig
from realtime.service.sessions import HostConfig, LiveSession, ServiceRenderer, SessionHost, prepare_avatar

__all__ = ["DROPPED", "GeneratorService", "ServiceConfig", "HostConfig", "LiveSession", "ServiceRenderer",
           "SessionHost", "prepare_avatar"]
