"""The walsender role: serve WAL from a walstream directory to standbys and receivers.

``WalSender(SenderOptions(...))`` in :mod:`.server` (the asyncio shell) runs one
sans-IO :class:`~.walsender.WalSenderSession` per connection over a
:class:`~.source.WalSource`; built on :mod:`walstream.protocol.server` and
:mod:`walstream.storage.reader`. Its command line is :mod:`walstream.cli.send`.
"""
