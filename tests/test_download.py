from __future__ import annotations

import hashlib
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from immune_aging.download import download
from immune_aging.errors import InputError

PAYLOAD = bytes(range(256)) * 400  # 102400 bytes
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class Handler(BaseHTTPRequestHandler):
    """Serves PAYLOAD at /file.h5ad with Range support; behaviour set on the server."""

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        server = self.server
        rng = self.headers.get("Range")
        server.requests.append(rng)
        if self.path != "/file.h5ad":
            self.send_error(404, "Not Found")
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if match and server.ranges:
            start = int(match.group(1))
            if start >= len(PAYLOAD):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(PAYLOAD)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if server.cuts:
            server.cuts -= 1
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.requests = []
    httpd.ranges = True
    httpd.cuts = 0
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/file.h5ad"
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def fetch(url, dest, **kwargs):
    kwargs.setdefault("backoff", 0.0)
    kwargs.setdefault("progress", False)
    return download(url, dest, **kwargs)


def test_download_with_checksum(server, tmp_path):
    dest = tmp_path / "cache" / "file.h5ad"
    assert fetch(server.url, dest, sha256=SHA) == dest
    assert dest.read_bytes() == PAYLOAD
    assert not dest.with_name("file.h5ad.part").exists()
    assert server.requests == [None]


def test_progress_is_logged_when_stderr_is_not_a_terminal(server, tmp_path, caplog):
    caplog.set_level("INFO", logger="immune_aging.download")
    download(server.url, tmp_path / "f", chunk_size=4096, backoff=0.0)
    assert any("100.0 % of" in r.getMessage() for r in caplog.records)


def test_resumes_after_a_cut_connection(server, tmp_path):
    server.cuts = 1
    dest = tmp_path / "file.h5ad"
    fetch(server.url, dest, sha256=SHA, retries=2)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [None, f"bytes={len(PAYLOAD) // 2}-"]


def test_cut_without_retries_keeps_the_partial_file_then_resumes(server, tmp_path):
    server.cuts = 1
    dest = tmp_path / "file.h5ad"
    part = tmp_path / "file.h5ad.part"
    with pytest.raises(InputError) as err:
        fetch(server.url, dest, retries=0)
    assert str(err.value) == (
        f"{server.url}: download failed after 1 attempt (connection cut at byte "
        f"{len(PAYLOAD) // 2} of {len(PAYLOAD)}); {len(PAYLOAD) // 2} bytes kept in {part}, "
        "run again to resume"
    )
    assert not dest.exists() and part.stat().st_size == len(PAYLOAD) // 2
    fetch(server.url, dest, sha256=SHA)
    assert dest.read_bytes() == PAYLOAD and not part.exists()
    assert server.requests[-1] == f"bytes={len(PAYLOAD) // 2}-"


def test_restarts_cleanly_when_the_server_ignores_the_range(server, tmp_path):
    server.ranges = False
    dest = tmp_path / "file.h5ad"
    (tmp_path / "file.h5ad.part").write_bytes(b"stale bytes from another file")
    fetch(server.url, dest, sha256=SHA)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == ["bytes=29-"]


def test_complete_partial_file_is_finished_without_data(server, tmp_path):
    dest = tmp_path / "file.h5ad"
    (tmp_path / "file.h5ad.part").write_bytes(PAYLOAD)
    fetch(server.url, dest, sha256=SHA)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [f"bytes={len(PAYLOAD)}-"]


def test_checksum_mismatch_is_refused_and_removed(server, tmp_path):
    dest = tmp_path / "file.h5ad"
    with pytest.raises(InputError) as err:
        fetch(server.url, dest, sha256="0" * 64)
    assert str(err.value) == (
        f"{server.url}: SHA-256 mismatch: expected {'0' * 64}, got {SHA} (download removed)"
    )
    assert list(tmp_path.iterdir()) == []


def test_http_404_is_one_line_and_leaves_nothing(server, tmp_path):
    url = server.url.replace("file.h5ad", "missing.h5ad")
    with pytest.raises(InputError) as err:
        fetch(url, tmp_path / "missing.h5ad")
    assert str(err.value) == f"{url}: HTTP 404 Not Found"
    assert list(tmp_path.iterdir()) == []


def test_connection_refused(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/file.h5ad"
    with pytest.raises(InputError) as err:
        fetch(url, tmp_path / "file.h5ad", retries=1)
    text = str(err.value)
    assert text.startswith(f"{url}: download failed after 2 attempts (cannot connect: ")
    assert "\n" not in text
    assert list(tmp_path.iterdir()) == []


def test_existing_file_is_reused_and_a_stale_one_replaced(server, tmp_path):
    dest = tmp_path / "file.h5ad"
    dest.write_bytes(PAYLOAD)
    fetch(server.url, dest, sha256=SHA)
    assert server.requests == []
    dest.write_bytes(b"an older version")
    fetch(server.url, dest, sha256=SHA)
    assert dest.read_bytes() == PAYLOAD and server.requests == [None]
