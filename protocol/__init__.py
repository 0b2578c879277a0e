"""The wire contract of Ash: every message that crosses a process boundary.

Pure: imports nothing of ours. `subjects` owns the NATS subject grammar, `codec` owns every
encoder and decoder; `commands`, `events`, `runners` and `api` hold the msgspec Structs.
"""

PROTOCOL_VERSION = 1
