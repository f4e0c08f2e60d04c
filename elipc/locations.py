"""Where the store is: an SQLite file's path or a PostgreSQL URL, and how to show one (or an
error about one) without the password it may hold. Standard library only: the CLI and the
server both load it early."""

from __future__ import annotations


def is_url(location: str) -> bool:
    """Whether `location` names a PostgreSQL database (else it is an SQLite file's path)."""
    return location.startswith(("postgresql://", "postgres://"))


def redact(location: str) -> str:
    """`location` with any password in it replaced by ***, for logs and error messages
    (never raises: a URL it cannot take apart is not shown past its scheme)."""
    if not is_url(location):
        return location
    import re
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(location)
        if parts.password is not None:
            host = parts.netloc.rsplit("@", 1)[1]
            parts = parts._replace(netloc=f"{parts.username or ''}:***@{host}")
        query = re.sub(r"(^|&)password=[^&]*", r"\1password=***", parts.query)
        return urlunsplit(parts._replace(query=query))
    except ValueError:
        return location.split("://", 1)[0] + "://***"


def without_password(text: str, url: str) -> str:
    """`text` with the password of `url` (as written, and decoded) replaced by ***."""
    from urllib.parse import unquote

    for secret in _passwords(url):
        for form in {secret, unquote(secret)}:
            if form:
                text = text.replace(form, "***")
    return text


def _passwords(url: str) -> list[str]:
    import re

    found = re.findall(r"(?<=:)([^:@/]*)(?=@)", url.split("?", 1)[0].split("://", 1)[-1])
    found += re.findall(r"[?&]password=([^&]*)", url)
    return found
