"""Persistence: the snapshot envelope, where snapshots live, and the Lua state serializer."""
