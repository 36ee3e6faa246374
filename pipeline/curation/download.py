"""HTTP(S) downloads for the curation stages, with the standard library only (urllib).

`download(url, dest, timeout_s=..., retries=..., max_bytes=...)` fetches one URL to `dest` and
returns `dest`. The choices, since curation runs over 100k+ remote files from servers we do not
control:

- Timeouts: `timeout_s` bounds the connect and every single socket read (headers included), so
  a server that never answers fails after about `timeout_s`. A server that trickles bytes just
  fast enough to beat that is cut off by the optional `total_timeout_s` (the whole call, retries
  included; checked between reads, so it is overshot by at most one `timeout_s`).
- Retries: connection errors, timeouts, cut connections and HTTP 408/425/429/500/502/503/504 are
  retried `retries` times with exponential back-off (`backoff_s * 2**k`, capped, with jitter;
  a `Retry-After` in seconds is honoured up to the cap). Other HTTP errors (404, 403, ...), an
  oversize file and an unsupported scheme fail at once: retrying cannot fix them.
- Size limit: a `Content-Length` (or `Content-Range` total) above `max_bytes` is refused before
  any body is read; the bytes actually received are counted too, so a server that sends no
  length, or lies about it, is stopped at `max_bytes + 1` bytes.
- Resume: bytes go to `dest.part`, beside a small `dest.part.json` that records the URL and the
  server's validator (ETag or Last-Modified). A later attempt, or a later call after the process
  was killed, asks for the rest with `Range: bytes=N-` and `If-Range: <validator>`; a server that
  ignores ranges (200) or whose file changed sends the whole file, and we start over.
- Atomic: `dest.part` is fsynced and renamed to `dest` only when complete (and the byte count
  matches the announced length), so an existing `dest` is always a whole file. It is therefore
  returned at once without a request, which is what a resumable stage wants.
- Errors: `DownloadError` whose message starts with the URL and says why (`.reason`, `.status`).

Two concurrent calls for the same `dest` are not supported (they would share the `.part` file);
the stages give every item its own destination.
"""

from __future__ import annotations

import email.utils
import http.client
import logging
import os
import random
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from pipeline import atomic
from pipeline.errors import WRITE_ERRNOS, PipelineError, write_error

log = logging.getLogger(__name__)

USER_AGENT = "nuwa-infinity-curation/0.1 (python-urllib)"
CHUNK_BYTES = 1 << 16
RETRYABLE_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})


class DownloadError(PipelineError, RuntimeError):
    """A download that failed; the message names the URL and the reason."""

    def __init__(self, url: str, reason: str, *, status: int | None = None, retryable: bool = False,
                 retry_after_s: float | None = None):
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason
        self.status = status
        self.retryable = retryable
        self.retry_after_s = retry_after_s


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to http(s) (urllib would also follow ftp)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        scheme = urllib.parse.urlsplit(newurl).scheme.lower()
        if scheme not in ("http", "https"):
            raise DownloadError(req.full_url, f"redirect to unsupported scheme {scheme!r} ({newurl})")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HttpOnlyRedirects)


def download(url: str, dest: str | os.PathLike, *, timeout_s: float, retries: int, max_bytes: int,
             backoff_s: float = 1.0, max_backoff_s: float = 30.0, total_timeout_s: float | None = None,
             headers: dict[str, str] | None = None) -> Path:
    """Download `url` to `dest` (see the module docstring); returns `dest`."""
    dest = Path(dest)
    if timeout_s <= 0 or retries < 0 or max_bytes <= 0:
        raise ValueError(f"download: need timeout_s > 0, retries >= 0, max_bytes > 0 "
                         f"(got {timeout_s}, {retries}, {max_bytes})")
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise DownloadError(url, f"unsupported URL scheme {scheme or '(none)'!r}; only http and https")
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    meta = dest.with_name(dest.name + ".part.json")
    deadline = time.monotonic() + total_timeout_s if total_timeout_s else None

    last: DownloadError | None = None
    for attempt in range(retries + 1):
        if attempt:
            delay = min(max_backoff_s, backoff_s * 2 ** (attempt - 1)) * random.uniform(0.75, 1.0)
            if last is not None and last.retry_after_s is not None:
                delay = max(delay, min(max_backoff_s, last.retry_after_s))
            if deadline is not None:
                delay = min(delay, max(0.0, deadline - time.monotonic()))
            log.warning("retrying in %.2f s (attempt %d of %d): %s", delay, attempt + 1, retries + 1, last)
            time.sleep(delay)
        try:
            _attempt(url, part, meta, timeout_s=timeout_s, max_bytes=max_bytes, deadline=deadline,
                     headers=headers or {})
        except DownloadError as e:
            if not e.retryable:
                raise
            last = e
            continue
        os.replace(part, dest)  # `part` was fsynced when its last byte was written
        meta.unlink(missing_ok=True)
        atomic.fsync_path(dest.parent, best_effort=True)  # make the rename durable
        return dest
    assert last is not None
    raise DownloadError(url, f"gave up after {retries + 1} attempt(s); last error: {last.reason}",
                        status=last.status)


def _attempt(url: str, part: Path, meta: Path, *, timeout_s: float, max_bytes: int,
             deadline: float | None, headers: dict[str, str]) -> None:
    """One request: fetch the whole file, or the rest of it, into `part`."""
    have, validator = _resume_state(url, part, meta)
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity",
                                               **headers})
    if have:
        req.add_header("Range", f"bytes={have}-")
        if validator:
            req.add_header("If-Range", validator)
    try:
        resp = _OPENER.open(req, timeout=_remaining(url, timeout_s, deadline))
    except urllib.error.HTTPError as e:
        with e:
            if e.code == 416 and have:
                # Our partial file is not a prefix the server can continue: start over.
                _discard(part, meta)
                raise DownloadError(url, "HTTP 416 on resume; restarting from zero", status=416,
                                    retryable=True) from None
            raise DownloadError(url, f"HTTP {e.code} {e.reason}", status=e.code,
                                retryable=e.code in RETRYABLE_HTTP,
                                retry_after_s=_retry_after(e.headers.get("Retry-After"))) from None
    except DownloadError:
        raise
    except urllib.error.URLError as e:
        raise DownloadError(url, f"cannot connect ({_describe(e.reason)})", retryable=True) from None
    except (TimeoutError, ConnectionError, http.client.HTTPException, OSError) as e:
        raise DownloadError(url, f"no response ({_describe(e)})", retryable=True) from None

    with resp:
        total = _plan_body(url, resp, have, part, meta)
        if total is not None and total > max_bytes:
            _discard(part, meta)
            raise DownloadError(url, f"file of {total} bytes exceeds the size limit of {max_bytes} bytes")
        if resp.status == 200:
            have = 0
            atomic.write_json(meta, {"url": url, "validator": _validator(resp), "total": total})
        count = have
        try:
            with open(part, "ab" if have else "wb") as f:
                while True:
                    _remaining(url, timeout_s, deadline)  # raises once the total time is spent
                    chunk = resp.read1(CHUNK_BYTES)
                    if not chunk:
                        break
                    count += len(chunk)
                    if count > max_bytes:
                        f.close()
                        _discard(part, meta)
                        raise DownloadError(url, f"more than the size limit of {max_bytes} bytes received")
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
        except DownloadError:
            raise
        except TimeoutError as e:
            raise DownloadError(url, f"read timed out after {count} bytes ({_describe(e)})",
                                retryable=True) from None
        except (ConnectionError, http.client.HTTPException, OSError) as e:
            if isinstance(e, OSError) and e.errno in WRITE_ERRNOS:  # the disk failed, not the connection
                raise write_error(part, e) from e
            raise DownloadError(url, f"connection lost after {count} bytes ({_describe(e)})",
                                retryable=True) from None
    if total is not None and count != total:
        if count > total:
            _discard(part, meta)
        raise DownloadError(url, f"received {count} of {total} bytes (connection cut)", retryable=True)


def _resume_state(url: str, part: Path, meta: Path) -> tuple[int, str | None]:
    """Bytes already on disk for this URL and the validator to resume against (else 0, None)."""
    if not part.is_file():
        meta.unlink(missing_ok=True)
        return 0, None
    try:
        info = atomic.read_json(meta)
    except (FileNotFoundError, ValueError):
        info = None
    if not isinstance(info, dict) or info.get("url") != url:
        _discard(part, meta)  # a partial file of unknown origin is never continued
        return 0, None
    return part.stat().st_size, info.get("validator")


def _plan_body(url: str, resp, have: int, part: Path, meta: Path) -> int | None:
    """Check the status and headers; return the full file size when the server says it."""
    if resp.status == 206:
        m = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", resp.headers.get("Content-Range", ""))
        if not m or int(m.group(1)) != have:
            _discard(part, meta)
            raise DownloadError(url, f"server answered Range {have}- with Content-Range "
                                     f"{resp.headers.get('Content-Range')!r}; restarting", retryable=True)
        return None if m.group(3) == "*" else int(m.group(3))
    if resp.status == 200:
        length = resp.headers.get("Content-Length")
        if length is not None and length.strip().isdigit():
            return int(length)
        return None
    raise DownloadError(url, f"unexpected HTTP {resp.status} {resp.reason}", status=resp.status)


def _validator(resp) -> str | None:
    etag = resp.headers.get("ETag")
    if etag and not etag.startswith("W/"):  # If-Range needs a strong validator
        return etag
    return resp.headers.get("Last-Modified")


def _remaining(url: str, timeout_s: float, deadline: float | None) -> float:
    if deadline is None:
        return timeout_s
    left = deadline - time.monotonic()
    if left <= 0:
        raise DownloadError(url, "total time limit exceeded")
    return min(timeout_s, left)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _discard(part: Path, meta: Path) -> None:
    part.unlink(missing_ok=True)
    meta.unlink(missing_ok=True)


def _describe(e: object) -> str:
    if isinstance(e, BaseException):
        text = str(e)
        return f"{type(e).__name__}: {text}" if text else type(e).__name__
    return str(e)
