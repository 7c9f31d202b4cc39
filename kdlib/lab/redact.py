"""Keep API keys out of everything kdlib prints, raises, logs or stores.

kdlib never takes a key as a parameter: a backend is told the *name* of an
environment variable and reads the value only when it builds a request header.
`redact` is the last line of defence for text that came from elsewhere (an error
body that echoes the key back, a traceback): it replaces the current value of
every registered key variable.
"""

from __future__ import annotations

import os

_KEY_ENVS: set[str] = {"OPENAI_API_KEY"}
_MIN_SECRET_LEN = 4  # do not "redact" a 1-character placeholder everywhere it occurs
MASK = "[REDACTED]"


def register_key_env(name: str) -> None:
    """Mark an environment variable as holding a secret, so `redact` hides its value."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"api_key_env must be a non-empty environment variable name, got {name!r}")
    _KEY_ENVS.add(name)


def redact(text: object) -> str:
    """`text` as a string with the value of every registered key variable replaced by [REDACTED]."""
    out = str(text)
    for name in sorted(_KEY_ENVS):
        value = os.environ.get(name, "")
        if len(value) >= _MIN_SECRET_LEN and value in out:
            out = out.replace(value, MASK)
    return out
