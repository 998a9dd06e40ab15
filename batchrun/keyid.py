"""How a key is named wherever it is shown: never by its secret."""

from __future__ import annotations

import hashlib


def key_id(raw_key: str) -> str:
    """The public name of an API key.

    `<access_key_id>:<secret>` keys are shown by the part before the colon; any other key by a short
    fingerprint of a hash, from which the key cannot be recovered.
    """
    access_id, sep, secret = raw_key.partition(":")
    if sep and access_id and secret:
        return access_id
    return "key-" + hashlib.sha256(raw_key.encode()).hexdigest()[:10]
