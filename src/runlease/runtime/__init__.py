"""The trio runtime: wires the actors to the journal, the embedded API and the socket server."""

import logging

from runlease.persistence.events import HistoryRetention
from runlease.runtime.collector import GcTuning
from runlease.runtime.history import EventHistory
from runlease.runtime.runtime import Runtime, RuntimeStatus, SessionHandle, open_runtime

# The runtime logs (expiries, steals, storage failures); the program embedding it decides
# where lines go. Without a handler of its own, Python would print the bare warnings to the
# stderr of a host that configured no logging.
logging.getLogger("runlease").addHandler(logging.NullHandler())

__all__ = [
    "EventHistory",
    "GcTuning",
    "HistoryRetention",
    "Runtime",
    "RuntimeStatus",
    "SessionHandle",
    "open_runtime",
]
