"""Schemathesis hooks for tests/e2e/test_schemathesis.py (loaded through SCHEMATHESIS_HOOKS).

The agent deploy and the workspace upload take `application/gzip`, which schemathesis has no
serializer for: send the generated binary as it is (random bytes are what a fuzzer should send;
the server must refuse them with a 4xx, never fail).
"""

import schemathesis

schemathesis.serializer.alias("application/gzip", "application/octet-stream")
