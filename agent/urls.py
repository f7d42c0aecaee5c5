"""A camera's URL may carry its password (``rtsp://user:password@host/...``): how to show one, and how to put
in one a password given apart from it (``capture.password_file``).

These work on the URL's user info as written (percent-encoded) and keep its host as written (an IPv6 address
keeps its brackets).
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit, urlunsplit


def redact(url: str) -> str:
    """``url`` with its password shown as ``***``, for log lines and error messages."""
    return url if urlsplit(url).password is None else _with_user_info(url, "***")


def without_password(url: str) -> str:
    """``url`` with its user, if any, and no password."""
    return _with_user_info(url, None)


def with_password(url: str, password: str) -> str:
    """``url``, which names a user and no password, with ``password`` percent-encoded after the user.

    ``ValueError`` (saying what is wrong, without the password) when ``url`` has no user or has a password.
    """
    parts = urlsplit(url)
    if parts.password is not None:
        raise ValueError("it holds a password already")
    if not parts.username:
        raise ValueError("it names no user for the password: rtsp://USER@host/...")
    return _with_user_info(url, quote(password, safe=""))


def _with_user_info(url: str, password: str | None) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    info = user if password is None else f"{user}:{password}"
    return urlunsplit(parts._replace(netloc=f"{info}@{host}" if info else host))
