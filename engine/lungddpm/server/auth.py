"""The server's one bearer token: read from a file, compared in constant time, never logged."""

from __future__ import annotations

import hmac
from pathlib import Path

from lungddpm.errors import ConfigError

MIN_TOKEN_CHARS = 16  # shorter tokens can be guessed over the network
MAKE_TOKEN = "python -c 'import secrets; print(secrets.token_urlsafe(32))' > FILE"


def read_token(path: str | Path) -> str:
    """The token in a file (surrounding whitespace removed); ConfigError naming the file and the fix."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"--token-file {path}: cannot be read ({getattr(error, 'strerror', None) or error}); "
                          f"make one with: {MAKE_TOKEN}") from None
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise ConfigError(f"--token-file {path}: the token must be one word of at least {MIN_TOKEN_CHARS} characters; "
                          f"make one with: {MAKE_TOKEN}")
    return token


def authorized(header: str | None, token: str) -> bool:
    """Whether an Authorization header is 'Bearer <token>' (compared in constant time)."""
    scheme, _, given = (header or "").partition(" ")
    return hmac.compare_digest(given.strip().encode("utf-8"), token.encode("utf-8")) and scheme.lower() == "bearer"
