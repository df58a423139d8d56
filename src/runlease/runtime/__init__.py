"""The trio runtime: wires the actors to the journal, the embedded API and the socket server."""

from runlease.persistence.events import HistoryRetention
from runlease.runtime.collector import GcTuning
from runlease.runtime.history import EventHistory
from runlease.runtime.runtime import Runtime, RuntimeStatus, SessionHandle, open_runtime

__all__ = [
    "EventHistory",
    "GcTuning",
    "HistoryRetention",
    "Runtime",
    "RuntimeStatus",
    "SessionHandle",
    "open_runtime",
]
