"""The trio runtime: actors, the embedded API, and (later) the socket server."""

from runlease.runtime.runtime import Runtime, RuntimeStatus, SessionHandle, open_runtime

__all__ = ["Runtime", "RuntimeStatus", "SessionHandle", "open_runtime"]
