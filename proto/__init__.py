"""Lantau wire contract: msgspec Structs encoded as msgpack on the bus.

Every message carries ``v`` (schema version) and a ``type`` tag so unions
decode to the right Struct and a consumer can refuse what it does not know.
"""

SCHEMA_VERSION = 1
