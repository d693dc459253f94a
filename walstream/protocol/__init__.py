"""The sans-IO protocol core: message codec, replication payloads, state machines.

Nothing in this package performs I/O, reads a clock or imports asyncio; bytes
and times are arguments, events and bytes are results.
"""
