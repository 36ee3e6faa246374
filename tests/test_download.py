"""pipeline.curation.download against a real HTTP server on 127.0.0.1 run in a thread by the test."""

from __future__ import annotations

import hashlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline.curation.download import DownloadError, download

BODY = bytes(range(256)) * 200  # 51,200 bytes
ETAG = '"v1-' + hashlib.sha1(BODY).hexdigest()[:8] + '"'


class Server:
    """A tiny server whose behaviour is chosen by the request path; it records every request."""

    def __init__(self):
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.hits: dict[str, int] = {}
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                with server.lock:
                    server.requests.append((self.path, dict(self.headers)))
                    n = server.hits[self.path] = server.hits.get(self.path, 0) + 1
                getattr(server, "route_" + self.path.strip("/").split("?")[0])(self, n)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    # --- routes -------------------------------------------------------------------------------
    @staticmethod
    def _send_body(h, body: bytes, *, ranges: bool, etag: str = ETAG, cut_at: int | None = None):
        start = 0
        rng = h.headers.get("Range")
        if ranges and rng and (h.headers.get("If-Range") in (None, etag)):
            start = int(rng.split("=")[1].split("-")[0])
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            h.send_response(200)
        h.send_header("Content-Length", str(len(body) - start))
        h.send_header("ETag", etag)
        if ranges:
            h.send_header("Accept-Ranges", "bytes")
        h.end_headers()
        data = body[start:]
        if cut_at is not None:
            h.wfile.write(data[:cut_at])
            h.wfile.flush()
            h.close_connection = True
            return
        h.wfile.write(data)

    def route_ok(self, h, n):
        self._send_body(h, BODY, ranges=True)

    def route_missing(self, h, n):
        h.send_response(404)
        h.send_header("Content-Length", "0")
        h.end_headers()

    def route_slow(self, h, n):
        time.sleep(3.0)  # never answers within the client's timeout
        self._send_body(h, BODY, ranges=False)

    def route_trickle(self, h, n):
        h.send_response(200)
        h.send_header("Content-Length", str(len(BODY)))
        h.end_headers()
        for i in range(len(BODY)):
            try:
                h.wfile.write(BODY[i:i + 1])
                h.wfile.flush()
            except OSError:
                return
            time.sleep(0.05)

    def route_big(self, h, n):
        self._send_body(h, BODY, ranges=True)

    def route_nolength(self, h, n):
        h.send_response(200)
        h.send_header("Connection", "close")
        h.end_headers()
        h.close_connection = True
        try:
            for _ in range(50):
                h.wfile.write(BODY[:4096])
        except OSError:
            pass

    def route_cut(self, h, n):
        # The first answer is cut half-way; later ones honour Range.
        self._send_body(h, BODY, ranges=True, cut_at=len(BODY) // 2 if n == 1 else None)

    def route_cut_norange(self, h, n):
        self._send_body(h, BODY, ranges=False, cut_at=len(BODY) // 3 if n == 1 else None)

    def route_changed(self, h, n):
        # Cut first; then the file changes (new ETag), so If-Range must give the whole new file.
        if n == 1:
            self._send_body(h, BODY, ranges=True, cut_at=1000)
        else:
            self._send_body(h, BODY[::-1], ranges=True, etag='"v2"')

    def route_flaky(self, h, n):
        if n < 3:
            h.send_response(503)
            h.send_header("Content-Length", "0")
            h.send_header("Retry-After", "0")
            h.end_headers()
            return
        self._send_body(h, BODY, ranges=True)


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


FAST = dict(timeout_s=2.0, retries=2, max_bytes=10**7, backoff_s=0.01)


def test_200_downloads_whole_file_and_reuses_it(server, tmp_path):
    dest = tmp_path / "a" / "file.bin"
    assert download(server.url("ok"), dest, **FAST) == dest
    assert dest.read_bytes() == BODY
    assert not (tmp_path / "a" / "file.bin.part").exists()
    assert not (tmp_path / "a" / "file.bin.part.json").exists()
    download(server.url("ok"), dest, **FAST)  # already complete: no second request
    assert server.hits["/ok"] == 1


def test_404_fails_at_once_naming_url_and_status(server, tmp_path):
    url = server.url("missing")
    with pytest.raises(DownloadError) as info:
        download(url, tmp_path / "x.bin", **FAST)
    assert url in str(info.value) and "404" in str(info.value)
    assert info.value.status == 404
    assert server.hits["/missing"] == 1  # permanent: not retried
    assert list(tmp_path.iterdir()) == []


def test_slow_server_times_out_within_bounds(server, tmp_path):
    t0 = time.monotonic()
    with pytest.raises(DownloadError) as info:
        download(server.url("slow"), tmp_path / "x.bin", timeout_s=0.3, retries=1, max_bytes=10**7,
                 backoff_s=0.05)
    elapsed = time.monotonic() - t0
    assert "timed out" in str(info.value) and "2 attempt" in str(info.value)
    assert 0.6 <= elapsed < 2.0, elapsed  # two attempts of ~timeout_s each, far less than the 3 s sleep
    assert not (tmp_path / "x.bin").exists()


def test_trickling_server_stopped_by_total_timeout(server, tmp_path):
    t0 = time.monotonic()
    with pytest.raises(DownloadError) as info:
        download(server.url("trickle"), tmp_path / "x.bin", timeout_s=1.0, retries=3, max_bytes=10**7,
                 total_timeout_s=0.5)
    assert "total time limit" in str(info.value)
    assert time.monotonic() - t0 < 0.5 + 1.0 + 0.5


def test_oversize_refused_from_content_length(server, tmp_path):
    with pytest.raises(DownloadError) as info:
        download(server.url("big"), tmp_path / "x.bin", timeout_s=2, retries=3, max_bytes=1000)
    assert "size limit" in str(info.value) and str(len(BODY)) in str(info.value)
    assert server.hits["/big"] == 1
    assert list(tmp_path.iterdir()) == []


def test_oversize_stopped_by_counting_without_length(server, tmp_path):
    with pytest.raises(DownloadError) as info:
        download(server.url("nolength"), tmp_path / "x.bin", timeout_s=2, retries=3, max_bytes=20000)
    assert "size limit of 20000" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_cut_connection_resumes_with_range(server, tmp_path):
    dest = tmp_path / "x.bin"
    assert download(server.url("cut"), dest, **FAST).read_bytes() == BODY
    (first_path, first), (second_path, second) = server.requests
    assert "Range" not in first
    assert second["Range"] == f"bytes={len(BODY) // 2}-"
    assert second["If-Range"] == ETAG


def test_resume_across_calls_after_giving_up(server, tmp_path):
    dest = tmp_path / "x.bin"
    with pytest.raises(DownloadError) as info:
        download(server.url("cut"), dest, timeout_s=2, retries=0, max_bytes=10**7)
    assert "connection cut" in str(info.value) or "connection lost" in str(info.value)
    part = tmp_path / "x.bin.part"
    assert part.stat().st_size == len(BODY) // 2 and not dest.exists()
    assert download(server.url("cut"), dest, **FAST).read_bytes() == BODY
    assert server.requests[-1][1]["Range"] == f"bytes={len(BODY) // 2}-"


def test_server_without_range_support_restarts_from_zero(server, tmp_path):
    dest = tmp_path / "x.bin"
    assert download(server.url("cut_norange"), dest, **FAST).read_bytes() == BODY
    assert server.hits["/cut_norange"] == 2


def test_changed_file_is_fetched_whole_again(server, tmp_path):
    dest = tmp_path / "x.bin"
    assert download(server.url("changed"), dest, **FAST).read_bytes() == BODY[::-1]


def test_retryable_status_then_success(server, tmp_path):
    dest = tmp_path / "x.bin"
    assert download(server.url("flaky"), dest, **FAST).read_bytes() == BODY
    assert server.hits["/flaky"] == 3


def test_retries_exhausted_on_503(server, tmp_path):
    with pytest.raises(DownloadError) as info:
        download(server.url("flaky"), tmp_path / "x.bin", timeout_s=2, retries=1, max_bytes=10**7,
                 backoff_s=0.01)
    assert "503" in str(info.value) and "gave up after 2" in str(info.value)


def test_connection_refused_and_bad_scheme(tmp_path):
    import socket

    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError) as info:
        download(f"http://127.0.0.1:{port}/x", tmp_path / "x.bin", timeout_s=1, retries=1, max_bytes=10,
                 backoff_s=0.01)
    assert f"127.0.0.1:{port}" in str(info.value) and "cannot connect" in str(info.value)
    with pytest.raises(DownloadError, match="unsupported URL scheme 'file'"):
        download("file:///etc/passwd", tmp_path / "y.bin", timeout_s=1, retries=0, max_bytes=10)
