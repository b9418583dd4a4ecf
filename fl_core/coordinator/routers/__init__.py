"""One APIRouter per resource: clients, tasks, models, updates, evaluations, health."""

from types import MappingProxyType

ENDS_CONNECTION = MappingProxyType({"Connection": "close"})
"""The header of a response after which the device's connection ends: a model download's
and an accepted upload's. A TLS connection keeps buffers as large as the largest message it
carried for as long as it stays open (uvloop's TLS, measured: about 350 KB per connection
after a 400 KB upload, 63 KB after a download sent in 64 KiB pieces, against 28 KB for an
idle one), and what a device sends next (its task long-poll, a turn request after
training) may be minutes later: a thousand devices holding such connections would grow the
coordinator by hundreds of MB. The device's next request opens a fresh connection (one
TLS handshake per round and transfer)."""
