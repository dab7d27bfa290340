"""The one URL parser: which URLs the backend fetches, and which of them get the API key.

Every URL that comes from outside (a task's image reference, a redirect's ``Location``, the
``ALLOWED_IMAGE_HOSTS`` entries) goes through :func:`parse_http_url`, and the download fetches
the canonical URL it returns, never the raw string. It parses with the parser of the library that
downloads (urllib3's ``parse_url``, which requests uses) and refuses whatever another parser could
read differently: backslashes, user-info (``user@host``), whitespace and control characters,
percent-encoded or otherwise odd host names, schemes other than http(s), ports out of range. As a
second check, the standard library's ``urlsplit`` must find the same host and port in the
canonical URL. The API key is attached only when the parsed origin (scheme, host, port) is
exactly Label Studio's. See docs/security.md.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Iterable, Optional, Tuple
from urllib.parse import urljoin, urlsplit

from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

DEFAULT_PORTS = {"http": 80, "https": 443}
# a DNS label: letters, digits, '-' inside; and '_', which RFC 1123 host names lack but Docker
# Compose service names (label_studio) and resolvers allow, and every parser here reads alike
_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")


class URLRefused(ValueError):
    """A URL the backend will not fetch; the message says why and what to change."""


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str  # lower case; an IPv6 address without brackets
    port: int

    def __str__(self) -> str:
        h = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{h}:{self.port}"


@dataclass(frozen=True)
class SafeURL:
    origin: Origin
    target: str  # path + query, percent-encoded, starts with "/"

    @property
    def url(self) -> str:
        """The canonical URL: what is fetched."""
        return f"{self.origin}{self.target}"


def _check_host(host: str, raw: str) -> str:
    host = host.lower()
    if host.startswith("[") and host.endswith("]"):
        try:
            return str(ipaddress.IPv6Address(host[1:-1]))
        except ValueError:
            raise URLRefused(f"{raw!r}: {host} is not an IPv6 address") from None
    host = host.rstrip(".")
    if not host or len(host) > 253 or not all(_LABEL.match(p) for p in host.split(".")):
        raise URLRefused(f"{raw!r}: host {host!r} is not a plain host name or IP address "
                         "(letters, digits, '-', '_' and '.' only)")
    last = host.rsplit(".", 1)[-1]
    if last.isdigit() or last.startswith("0x"):  # looks like an IPv4 address: only the dotted-quad form
        try:
            if str(ipaddress.IPv4Address(host)) != host:
                raise ValueError
        except ValueError:
            raise URLRefused(f"{raw!r}: {host!r} is not a dotted-quad IPv4 address (resolvers read "
                             "short, octal and hex forms differently)") from None
    return host


def parse_http_url(raw: str) -> SafeURL:
    """Parse an absolute http(s) URL under the policy above, or raise URLRefused."""
    if not isinstance(raw, str) or not raw:
        raise URLRefused("no URL")
    if len(raw) > 8192:
        raise URLRefused(f"URL of {len(raw)} characters (at most 8192)")
    bad = sorted({c for c in raw if ord(c) <= 0x20 or ord(c) == 0x7F})
    if bad:
        raise URLRefused(f"{raw[:200]!r}: whitespace or control characters {bad!r} in the URL")
    m = re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*)", raw)
    if m and "%" in m.group(1):
        raise URLRefused(f"{raw[:200]!r}: a percent-encoded character in the host part")
    if "\\" in raw:
        raise URLRefused(f"{raw[:200]!r}: a backslash in the URL (parsers disagree on what it means)")
    try:
        u = parse_url(raw)
    except (LocationParseError, ValueError) as exc:
        raise URLRefused(f"{raw[:200]!r}: not a URL ({exc})") from None
    scheme = (u.scheme or "").lower()
    if scheme not in DEFAULT_PORTS:
        raise URLRefused(f"{raw[:200]!r}: scheme {scheme or '(none)'!r}; only http and https are fetched")
    authority = re.split(r"[/?#]", raw.split("://", 1)[-1], maxsplit=1)[0]
    if u.auth is not None or "@" in authority:  # urllib3 drops an empty user info ('http://@h/')
        raise URLRefused(f"{raw[:200]!r}: user info ('user@host') in the URL")
    host = _check_host(u.host or "", raw[:200])
    port = DEFAULT_PORTS[scheme] if u.port is None else int(u.port)
    if not 0 < port < 65536:
        raise URLRefused(f"{raw[:200]!r}: port {port} out of range")
    target = (u.path or "/") + (f"?{u.query}" if u.query is not None else "")
    if not target.startswith("/"):
        raise URLRefused(f"{raw[:200]!r}: the path must start with '/'")
    safe = SafeURL(Origin(scheme, host, port), target)
    # second opinion: the standard library must read the canonical URL the same way
    s = urlsplit(safe.url)
    if (s.scheme, (s.hostname or "").rstrip("."), s.port or DEFAULT_PORTS.get(s.scheme)) != (scheme, host, port) \
            or s.username is not None:
        raise URLRefused(f"{raw[:200]!r}: parsers disagree about this URL")
    return safe


def resolve(base: str, ref: str, prefix: Optional[str] = None) -> SafeURL:
    """A task's image reference ``ref`` (absolute, or a path such as ``/data/upload/1/x.png``)
    against Label Studio's base URL ``base``, parsed (``parse_http_url``). Label Studio served under
    a sub-path (``HOST`` with a path) writes that prefix into its paths (``/ls/data/upload/...``):
    such a path is taken from the origin, as a browser does; a path without the prefix (``/data/...``,
    as written at the root) is put under it. ``prefix``: ``base_path(base)``, when the caller keeps it."""
    prefix = base_path(base) if prefix is None else prefix
    try:
        joined = urljoin(base, ref)
    except ValueError as exc:  # "Invalid IPv6 URL" ('http://[::1/x'): refused like any bad URL, not an
        raise URLRefused(f"{ref[:200]!r}: {exc}") from None  # unexpected error with a traceback (review, 2026-12-05)
    safe = parse_http_url(joined)
    if prefix and ref.startswith("/") and not ref.startswith("//"):
        path = safe.target.partition("?")[0]  # canonical: '/a%7eb' and '/a%7Eb' are one prefix
        if path != prefix and not path.startswith(prefix + "/"):
            safe = parse_http_url(urljoin(base.rstrip("/") + "/", ref.lstrip("/")))
    return safe


def base_path(url: str) -> str:
    """The canonical path of a base URL (``LABEL_STUDIO_URL``), as ``parse_http_url`` writes the
    paths it is compared with, without the trailing '/' ("" at the root)."""
    return parse_http_url(url.rstrip("/") + "/").target.partition("?")[0].rstrip("/")


@dataclass(frozen=True)
class HostRule:
    """One ``ALLOWED_IMAGE_HOSTS`` entry: ``host`` (http on 80 and https on 443), ``host:port``
    (either scheme on that port) or ``scheme://host[:port]`` (exactly that origin)."""
    host: str
    port: Optional[int] = None
    scheme: Optional[str] = None

    def matches(self, o: Origin) -> bool:
        if o.host != self.host or (self.scheme and o.scheme != self.scheme):
            return False
        if self.port is None:
            return o.port == DEFAULT_PORTS[o.scheme]
        return o.port == self.port


def parse_host_rule(entry: str) -> HostRule:
    e = entry.strip()
    rest = e.split("://", 1)[1] if "://" in e else e
    if re.search(r"[/?#]", rest.rstrip("/")):
        # a rule is an origin: a path here would be dropped silently, allowing the whole host
        raise URLRefused(f"{e!r}: a rule is a host (and port), not a path; a path would allow the whole host anyway")
    if "://" in e:
        u = parse_http_url(e if e.count("/") > 2 else e + "/")
        explicit = re.search(r"://(\[[^\]]*\]|[^/:]*):(\d+)", e) is not None
        return HostRule(u.origin.host, u.origin.port if explicit else DEFAULT_PORTS[u.origin.scheme],
                        u.origin.scheme)
    u = parse_http_url(f"http://{e}/")
    explicit = re.search(r"^(\[[^\]]*\]|[^/:]*):(\d+)$", e) is not None
    return HostRule(u.origin.host, u.origin.port if explicit else None)


def parse_host_rules(entries: Iterable[str]) -> Tuple[HostRule, ...]:
    return tuple(parse_host_rule(e) for e in entries if e.strip())


LOCAL_FILES_PATH = "/data/local-files/"


def local_files_ref(safe: SafeURL, base: Origin, base_path: str = "") -> Optional[str]:
    """The ``d`` of a Label Studio Local Files URL (``/data/local-files/?d=<path>``), decoded once
    the way Label Studio's view reads it (``request.GET.get("d")``: the query split on ``&``, ``+``
    a space, percent-decoded once, the last ``d`` wins); None when ``safe`` is not such a URL on
    Label Studio's origin ``base`` (under its path prefix ``base_path``, if it is served under one).
    Raises URLRefused for a ``d`` the backend will not look up on disk (missing, not UTF-8)."""
    if safe.origin != base:
        return None
    path, _, query = safe.target.partition("?")
    if path not in (base_path.rstrip("/") + LOCAL_FILES_PATH, base_path.rstrip("/") + LOCAL_FILES_PATH[:-1]):
        return None
    from urllib.parse import parse_qsl
    try:
        pairs = parse_qsl(query, keep_blank_values=True, encoding="utf-8", errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise URLRefused(f"{safe.url[:200]!r}: the Local Files path (d=) is not valid UTF-8 once "
                         "percent-decoded") from None
    values = [v for k, v in pairs if k == "d"]
    if not values or not values[-1]:
        raise URLRefused(f"{safe.url[:200]!r}: a Local Files URL without a path (d=)")
    return values[-1]


# ---------------------------------------------------------------------------- redaction
_ABSOLUTE = re.compile(r"(?i)\b[a-z][a-z0-9+.-]*://[^\s'\"<>`]*")
# a path with a query or fragment, as requests/urllib3 write it ("Max retries exceeded with url: /k?X-Amz-...")
_PATH_QUERY = re.compile(r"(?<![\w/:.%-])(/[^\s'\"<>`?#]*)[?#][^\s'\"<>`]*")


def _redact_one(url: str) -> str:
    scheme, _, rest = url.partition("://")
    cut = len(rest)
    for c in "/?#":
        i = rest.find(c)
        if i != -1:
            cut = min(cut, i)
    netloc, tail = rest[:cut], rest[cut:]
    host = netloc.rpartition("@")[2]  # no user info
    path = re.split(r"[?#]", tail, maxsplit=1)[0]  # no query (presigned signatures), no fragment
    return f"{scheme}://{host}{path}"


def redact_urls(text) -> str:
    """``text`` (a failure reason, an exception's message) with every URL in it cut to
    ``scheme://host[:port]/path``: no user info, no query, no fragment (presigned S3 and GCS URLs
    carry their signatures in the query), and a bare ``/path?query`` (how requests and urllib3 name
    a URL in their errors) cut to its path. What ``/status`` and the dashboard show of task URLs."""
    if not isinstance(text, str):
        return text
    text = _ABSOLUTE.sub(lambda m: _redact_one(m.group(0)), text)
    return _PATH_QUERY.sub(lambda m: m.group(1), text)


def same_url_key(url: str) -> Optional[tuple]:
    """What makes two backend URLs the same backend, read by the one URL parser (``urls``): the
    origin (scheme, lower-case host, port with defaults spelt out) and the path without a trailing
    slash. Two backends behind one proxy differ by path. None for a URL the parser refuses."""
    try:
        safe = parse_http_url(str(url).strip().rstrip("/") + "/")
    except URLRefused:
        return None
    return safe.origin, safe.target.split("?", 1)[0].rstrip("/")
