"""The trio shell: the embedded API, the actors it drives, the socket server and the trio
client."""

from runlease.runtime.runtime import Runtime, RuntimeStatus, SessionHandle, open_runtime

__all__ = ["Runtime", "RuntimeStatus", "SessionHandle", "open_runtime"]
