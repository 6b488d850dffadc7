"""Keeping credentials out of everything dagflow writes or says.

Storage credentials reach dagflow three ways: in storage options (``secret``,
``token``, ``client_kwargs: {aws_secret_access_key: ...}``), in a URL's user part
(``s3://KEY:SECRET@bucket/...``, which dagflow refuses), and in a signed URL's query
(``?X-Amz-Signature=...``, ``?sig=...`` of an Azure SAS). Records, logs, reports and
error messages only ever hold what these functions return:

* :func:`redact_url` -- the URL without its user part and with signed query values
  replaced by ``***``;
* :func:`redact_options` -- storage options with every secret-looking value replaced;
* :func:`redact_text` -- any text (an error message from a storage library) with the
  secret values of given options, URL user parts and signed query values replaced.

This module owns redaction only; it imports nothing of dagflow.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

__all__ = ["MASK", "has_userinfo", "redact_options", "redact_text", "redact_url", "secrets_of"]

#: What a redacted value reads as.
MASK = "***"

#: Option names whose values are secrets (a name containing any of these words).
_SECRET_WORDS = re.compile(
    r"secret|password|passwd|token|credential|signature|private|session|sas|"
    r"(^|_)key($|_)|access_key|account_key|auth|connection_string|client_secret",
    re.IGNORECASE,
)

#: Option names that look secret by the pattern above but are not.
_NOT_SECRET = frozenset({"key_prefix", "requester_pays", "use_ssl", "anon", "profile",
                         "endpoint_url", "region_name", "token_url", "auth_url"})

#: Query parameters of signed URLs whose values are credentials (lower case).
_SECRET_QUERY = frozenset({
    "x-amz-signature", "x-amz-credential", "x-amz-security-token", "signature", "sig",
    "x-goog-signature", "x-goog-credential", "googleaccessid", "token", "access_token",
    "awsaccesskeyid",
})

#: ``scheme://user[:password]@`` inside any text.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")

#: ``name=value`` of a secret query parameter inside any text.
_QUERY_IN_TEXT = re.compile(
    r"(?P<name>[?&](?:X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|Signature|sig|"
    r"X-Goog-Signature|X-Goog-Credential|GoogleAccessId|token|access_token|"
    r"AWSAccessKeyId)=)(?P<value>[^&\s\"']+)",
    re.IGNORECASE,
)

#: Secret values shorter than this are not searched for in text (they would match
#: ordinary words).
_MIN_SECRET_CHARS = 6


def has_userinfo(url: str) -> bool:
    """Whether a URL carries a user part (``scheme://user:password@host/...``).

    Examples
    --------
    >>> has_userinfo("s3://KEY:SECRET@bucket/a.jpg"), has_userinfo("s3://bucket/a@b.jpg")
    (True, False)
    """
    return _USERINFO.match(url) is not None


def redact_url(url: str) -> str:
    """The URL without credentials: no user part, signed query values masked.

    Examples
    --------
    >>> redact_url("s3://AKIA123:s3cr3t@bucket/photos/a.jpg")
    's3://***@bucket/photos/a.jpg'
    >>> redact_url("https://host/a.jpg?X-Amz-Signature=abc123&versionId=7")
    'https://host/a.jpg?X-Amz-Signature=***&versionId=7'
    >>> redact_url("/data/in/a.jpg")
    '/data/in/a.jpg'
    """
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", url)
    if "?" not in text:
        return text
    try:
        parts = urlsplit(text)
    except ValueError:
        return _QUERY_IN_TEXT.sub(lambda m: f"{m['name']}{MASK}", text)
    if not parts.query:
        return text
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if not any(name.lower() in _SECRET_QUERY for name, _ in pairs):
        return text
    query = "&".join(f"{name}={MASK if name.lower() in _SECRET_QUERY else value}"
                     for name, value in pairs)
    return urlunsplit(parts._replace(query=query))


def _is_secret_name(name: Any) -> bool:
    text = str(name)
    return text.lower() not in _NOT_SECRET and _SECRET_WORDS.search(text) is not None


def redact_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of storage options fit to show: secret values (and, in nested mappings,
    theirs) replaced by :data:`MASK`, URLs through :func:`redact_url`.

    Examples
    --------
    >>> redact_options({"key": "AKIA123", "secret": "s3cr3t", "anon": False,
    ...                 "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000",
    ...                                   "aws_session_token": "tok"}})
    ... # doctest: +NORMALIZE_WHITESPACE
    {'key': '***', 'secret': '***', 'anon': False,
     'client_kwargs': {'endpoint_url': 'http://127.0.0.1:9000', 'aws_session_token': '***'}}
    """
    shown: dict[str, Any] = {}
    for name, value in (options or {}).items():
        if isinstance(value, Mapping):
            shown[name] = redact_options(value)
        elif value is not None and _is_secret_name(name) and not isinstance(value, bool):
            shown[name] = MASK
        elif isinstance(value, str):
            shown[name] = redact_url(value)
        else:
            shown[name] = value
    return shown


def secrets_of(options: Mapping[str, Any] | None) -> list[str]:
    """The secret string values of storage options (nested mappings included), longest
    first: what :func:`redact_text` searches for.

    Examples
    --------
    >>> secrets_of({"key": "AKIA123", "secret": "s3cr3t", "client_kwargs": {"region_name": "x"}})
    ['AKIA123', 's3cr3t']
    """
    found: list[str] = []
    for name, value in (options or {}).items():
        if isinstance(value, Mapping):
            found.extend(secrets_of(value))
        elif isinstance(value, str) and _is_secret_name(name) and \
                len(value) >= _MIN_SECRET_CHARS:
            found.append(value)
    return sorted(set(found), key=lambda s: (-len(s), s))


def redact_text(text: str, options: Mapping[str, Any] | None = None,
                extra: Iterable[str] = ()) -> str:
    """``text`` with credentials replaced by :data:`MASK`: the secret values of
    ``options`` and ``extra``, URL user parts, and signed query values.

    Examples
    --------
    >>> redact_text("denied for s3cr3tvalue at s3://K:S@bucket/a?sig=xyz",
    ...             {"secret": "s3cr3tvalue"})
    'denied for *** at s3://***@bucket/a?sig=***'
    """
    for secret in [*secrets_of(options), *extra]:
        if secret and len(secret) >= _MIN_SECRET_CHARS:
            text = text.replace(secret, MASK)
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    return _QUERY_IN_TEXT.sub(lambda m: f"{m['name']}{MASK}", text)
