"""WAL on disk and in records: segment naming, and (later) the sans-IO decoder."""
