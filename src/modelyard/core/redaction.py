"""Secrets never reach a message: every URI that is printed or logged goes through here."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_SECRET_QUERY_KEYS = re.compile(
    r"(pass(word)?|pwd|secret|token|key|credential|signature|sig|auth|session)", re.IGNORECASE
)
#: What replaces a secret.
REDACTED = "***"
# user:password@ in a URI-like string inside a longer text (a log line, an error message).
_USERINFO_IN_TEXT = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s'\"]+)@")


def redact_uri(uri: str) -> str:
    """``uri`` with its user info and password-like query parameters replaced.

    ``postgresql://app:s3cret@db/mlflow?sslpassword=x`` becomes
    ``postgresql://***@db/mlflow?sslpassword=***``. Anything that does not parse as a URI
    is returned with user-info-looking parts masked all the same.
    """
    try:
        parts = urlsplit(uri)
    except ValueError:
        return redact_text(uri)
    if not parts.scheme or not parts.netloc:
        return redact_text(uri)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rsplit('@', 1)[1]}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, REDACTED if _SECRET_QUERY_KEYS.search(k) else v) for k, v in pairs], safe="*"
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """Mask ``scheme://user:password@`` wherever it appears in ``text``."""
    return _USERINFO_IN_TEXT.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", text)
