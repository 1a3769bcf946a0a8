"""Many avatars per process: one shared generator service, many live sessions over it."""

from realtime.service.generator_service import DROPPED, GeneratorService, GeneratorServiceDown, ServiceConfig
from realtime.service.sessions import HostConfig, LiveSession, ServiceRenderer, SessionHost, WaitConfig, prepare_avatar

__all__ = [
    "DROPPED",
    "GeneratorService",
    "GeneratorServiceDown",
    "ServiceConfig",
    "HostConfig",
    "LiveSession",
    "ServiceRenderer",
    "SessionHost",
    "WaitConfig",
    "prepare_avatar",
]
