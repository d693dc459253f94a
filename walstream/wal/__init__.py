"""WAL on disk and in records: segment names, the receiver's disk layer, the sans-IO decoder."""
