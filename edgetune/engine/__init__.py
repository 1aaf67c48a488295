"""ONNX Runtime binding: sessions, zero-copy IOBinding to the arena, the start-up self-check."""

from edgetune.engine.runner import LossEngine
from edgetune.engine.selfcheck import check_engine
from edgetune.engine.session import create_session, session_options

__all__ = ["LossEngine", "check_engine", "create_session", "session_options"]
