"""WAL files on disk: writing a pg_receivewal-layout directory, compression, reading it back.

The one layer of walstream that touches WAL files. :mod:`.directory` is the
writer (pre-padding, fsync, rename: the receiver's disk policy),
:mod:`.compression` the gzip/lz4/zstd codecs, :mod:`.reader` the one reader
(find a segment by timeline and number, read a range, segment size,
timelines and history) that the startup role, waldump and the sender share,
:mod:`.retention` the removal of segments a bounded directory no longer needs.
"""
