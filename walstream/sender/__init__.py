"""The walsender role: serve WAL from a walstream directory to standbys and receivers.

Being built on :mod:`walstream.protocol.server` and :mod:`walstream.storage.reader`;
its command line is :mod:`walstream.cli.send`.
"""
