"""Durable storage: the LMDB journal and snapshot store. The only package that uses lmdb.

Everything here is synchronous and thread-safe; the trio runtime calls it from worker
threads. Nothing here imports trio.
"""
