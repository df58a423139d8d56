"""Actor logic without IO: what each actor keeps and decides, independent of trio.

The trio shells that pump mailboxes live in :mod:`runlease.runtime.actors`.
"""
