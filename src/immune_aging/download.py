"""Resumable HTTP(S) downloads with progress, checksum and atomic rename.

:func:`download` streams a URL into ``<dest>.part``; when the connection is cut
it resumes with an HTTP ``Range`` request (automatically up to ``retries``
times, and on the next call after that), restarts cleanly when the server
ignores the range (200 instead of 206), verifies an optional SHA-256 and only
then renames the partial file onto ``dest``. A file at ``dest`` is therefore
always complete. Failures raise :class:`~immune_aging.errors.InputError` with
one line naming the URL.

Only the standard library is used (``urllib``).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

from immune_aging.errors import InputError

log = logging.getLogger(__name__)

USER_AGENT = "immune-aging-workflow (urllib)"
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_RETRYABLE_HTTP = {408, 429, 500, 502, 503, 504}


class _Retry(Exception):
    """A transient failure: the partial file is kept and the download resumes."""


def download(
    url: str,
    dest: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    retries: int = 5,
    backoff: float = 2.0,
    timeout: float = 60.0,
    chunk_size: int = 1 << 20,
    progress: bool | None = None,
) -> Path:
    """Download ``url`` to ``dest``, resuming a previous partial download.

    Parameters
    ----------
    url
        HTTP(S) address.
    dest
        Final file. Its folder is created. While downloading, data go to
        ``<dest>.part``, which survives a cut connection so the next attempt
        (or the next call) resumes where it stopped.
    sha256
        Expected SHA-256 hex digest; ``None`` skips the check.
    retries
        Further attempts after a cut connection, a timeout or an HTTP 5xx.
    backoff
        Seconds to wait before the first retry (doubled each time).
    timeout
        Seconds without data before a connection counts as cut.
    chunk_size
        Bytes read at a time.
    progress
        Show progress on stderr: a bar on a terminal, a log line every 10 %
        otherwise. ``None`` (default) shows it when stderr is a terminal and
        logs otherwise; ``False`` shows nothing.

    Returns
    -------
    Path
        ``dest``.

    Raises
    ------
    InputError
        HTTP error, unreachable server, too many cuts, or checksum mismatch
        (the partial file is removed then; after cuts it is kept for resuming).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    expected = sha256.lower() if sha256 else None
    if dest.is_file():
        if expected is None or _file_sha256(dest) == expected:
            log.info("%s: already downloaded to %s", url, dest)
            return dest
        log.warning("%s: %s does not match the expected SHA-256; downloading again", url, dest)
        dest.unlink()
    attempt = 0
    while True:
        try:
            _attempt(url, part, timeout=timeout, chunk_size=chunk_size, progress=progress)
            break
        except _Retry as exc:
            attempt += 1
            have = part.stat().st_size if part.exists() else 0
            if attempt > retries:
                where = f"; {have} bytes kept in {part}, run again to resume" if have else ""
                tries = f"{attempt} attempt{'s' if attempt > 1 else ''}"
                raise InputError(f"{url}: download failed after {tries} ({exc}){where}") from None
            wait = backoff * 2 ** (attempt - 1)
            log.warning("%s: %s; resuming at byte %d in %.0f s", url, exc, have, wait)
            time.sleep(wait)
    if expected is not None:
        got = _file_sha256(part)
        if got != expected:
            part.unlink()
            raise InputError(
                f"{url}: SHA-256 mismatch: expected {expected}, got {got} (download removed)"
            )
    os.replace(part, dest)
    log.info("%s: downloaded to %s (%d bytes)", url, dest, dest.stat().st_size)
    return dest


def _attempt(url: str, part: Path, *, timeout: float, chunk_size: int, progress: bool | None):
    """One HTTP request: append to ``part`` from its current size, to the end."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            total = _total_from_range(exc.headers.get("Content-Range", ""))
            if total == offset:  # the partial file is already complete
                return
            log.warning("%s: stored partial file does not fit the remote file; restarting", url)
            part.unlink()
            raise _Retry("range not satisfiable") from None
        if exc.code in _RETRYABLE_HTTP:
            raise _Retry(f"HTTP {exc.code} {exc.reason}") from None
        if part.exists():
            part.unlink()
        raise InputError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _Retry(f"cannot connect: {reason}") from None
    with response:
        status = response.status
        total = None
        if offset and status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if match is None or int(match.group(1)) != offset:
                log.warning("%s: server answered a different range; restarting", url)
                part.unlink()
                raise _Retry("unexpected Content-Range")
            total = None if match.group(3) == "*" else int(match.group(3))
        else:
            if offset:
                log.warning("%s: server does not resume (HTTP %d); restarting from 0", url, status)
            offset = 0
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        mode = "ab" if offset else "wb"
        bar = _Progress(url, total, offset, progress)
        written = offset
        with open(part, mode) as fh:
            try:
                written = _copy(response, fh, chunk_size, bar, written)
            except (http.client.HTTPException, OSError) as exc:
                raise _Retry(f"connection cut: {type(exc).__name__}") from None
            finally:
                fh.flush()
                os.fsync(fh.fileno())
                bar.close()
        if total is not None and written < total:
            raise _Retry(f"connection cut at byte {written} of {total}")


def _copy(response: Any, fh: IO[bytes], chunk_size: int, bar: _Progress, written: int) -> int:
    while block := response.read(chunk_size):
        fh.write(block)
        written += len(block)
        bar.update(written)
    return written


def _total_from_range(value: str) -> int | None:
    match = re.match(r"bytes\s+\*/(\d+)", value)
    return int(match.group(1)) if match else None


def _file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class _Progress:
    """Progress on stderr: a bar on a terminal, a log line per 10 % otherwise."""

    def __init__(self, url: str, total: int | None, start: int, mode: bool | None) -> None:
        self.url = url
        self.total = total
        self.tty = mode is not False and sys.stderr.isatty()
        self.enabled = mode is not False
        self.t0 = time.monotonic()
        self.start = start
        self.last_draw = 0.0
        self.next_tenth = 1 if total is None else int(10 * start / max(total, 1)) + 1
        self.now = start

    def update(self, done: int) -> None:
        self.now = done
        if not self.enabled:
            return
        if self.tty:
            if time.monotonic() - self.last_draw >= 0.2:
                self._draw()
            return
        if self.total:
            if done * 10 >= self.next_tenth * self.total:
                self.next_tenth = done * 10 // self.total + 1
                log.info("%s: %s", self.url, self._text())
        elif done >= self.next_tenth * (100 << 20):
            self.next_tenth += 1
            log.info("%s: %s", self.url, self._text())

    def _text(self) -> str:
        rate = (self.now - self.start) / max(time.monotonic() - self.t0, 1e-9)
        mib = self.now / (1 << 20)
        if self.total:
            pct = 100.0 * self.now / self.total
            return (
                f"{pct:5.1f} % of {self.total / (1 << 20):.1f} MiB, {rate / (1 << 20):.1f} MiB/s"
            )
        return f"{mib:.1f} MiB, {rate / (1 << 20):.1f} MiB/s"

    def _draw(self) -> None:
        self.last_draw = time.monotonic()
        if self.total:
            filled = int(30 * self.now / self.total)
            bar = "#" * filled + "-" * (30 - filled)
            sys.stderr.write(f"\rdownload [{bar}] {self._text()}")
        else:
            sys.stderr.write(f"\rdownload {self._text()}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self._draw()
            sys.stderr.write("\n")
            sys.stderr.flush()
