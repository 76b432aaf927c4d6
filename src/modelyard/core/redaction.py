"""Secrets never reach a message: every URI that is printed or logged goes through here."""

from __future__ import annotations

import logging
import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_SECRET_QUERY_KEYS = re.compile(
    r"(pass(word)?|pwd|secret|token|key|credential|signature|sig|auth|session)", re.IGNORECASE
)
#: What replaces a secret.
REDACTED = "***"
# user:password@ in a URI-like string inside a longer text (a log line, an error message).
_USERINFO_IN_TEXT = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s'\"]+)@")
# A URI with a query inside a longer text.
_URI_WITH_QUERY = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+\?[^\s'\"<>]+")


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
    """Mask ``scheme://user:password@`` and password-like query parameters of the URIs
    wherever they appear in ``text``."""
    text = _USERINFO_IN_TEXT.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", text)
    return _URI_WITH_QUERY.sub(lambda m: _redact_query(m.group(0)), text)


def _redact_query(uri: str) -> str:
    try:
        return redact_uri(uri)
    except ValueError:
        return uri


class RedactingFilter(logging.Filter):
    """A logging filter that redacts each record's message (``redact_text``), whichever
    library logged it: an exception from an HTTP client quoting a URL with a token, a
    traceback naming a database URL."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        return True


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Redact every record that reaches ``logger``'s handlers (default: the root logger's,
    which records of every library reach). Idempotent."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
