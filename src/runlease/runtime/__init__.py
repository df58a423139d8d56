"""The trio runtime: wires the actors to the journal, the embedded API and the socket server."""

from runlease.runtime.collector import GcTuning
from runlease.runtime.runtime import Runtime, RuntimeStatus, SessionHandle, open_runtime

__all__ = ["GcTuning", "Runtime", "RuntimeStatus", "SessionHandle", "open_runtime"]
