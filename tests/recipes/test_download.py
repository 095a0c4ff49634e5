"""Corpus downloads (recipes/download.py) against a local HTTP server on 127.0.0.1 that the tests start and stop:
interrupted transfers resume with a Range request (or restart where the server ignores ranges), and a truncated
or wrong archive is refused before anything is unpacked, naming the archive."""

import hashlib
import importlib.util
import io
import os
import sys
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from speechtrain.errors import DataError

REPO_DIR = Path(__file__).resolve().parents[2]  # the checkout: recipes/
sys.path.insert(0, str(REPO_DIR / "recipes"))
import download  # noqa: E402  (recipes/download.py, as the prepare scripts import it)


def load_prepare_module(corpus: str):
    spec = importlib.util.spec_from_file_location(f"prepare_{corpus}", REPO_DIR / "recipes" / corpus / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


ARCHIVE = tar_gz({"Corpus/part/data.bin": os.urandom(200_000)})  # incompressible: the archive is ~200 kB
SHA256 = "sha256:" + hashlib.sha256(ARCHIVE).hexdigest()


class ArchiveServer:
    """Serves `payload` at every path on 127.0.0.1 (a free port), honouring `Range: bytes=N-` if `ranges`; the
    first `cuts` responses announce the full length but close the connection after `cut_after` bytes."""

    def __init__(self) -> None:
        self.payload, self.ranges, self.cuts, self.cut_after = ARCHIVE, True, 0, 0
        self.requests: list[str | None] = []  # the Range header of each request
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                asked = self.headers.get("Range")
                server.requests.append(asked)
                start = int(asked.removeprefix("bytes=").rstrip("-")) if asked and server.ranges else 0
                if start >= len(server.payload) > 0:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(server.payload)}")
                    self.end_headers()
                    return
                body = server.payload[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(server.payload) - 1}/{len(server.payload)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cuts > 0:
                    server.cuts -= 1
                    body = body[: server.cut_after]
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1")  # a proxy configured for the machine must not see these requests
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    archive_server = ArchiveServer()
    archive_server.thread.start()
    try:
        yield archive_server
    finally:
        archive_server.httpd.shutdown()
        archive_server.httpd.server_close()
        archive_server.thread.join(timeout=10)
    assert not archive_server.thread.is_alive()


def test_an_interrupted_download_resumes_from_the_partial_file(server, tmp_path):
    server.cuts, server.cut_after = 1, len(ARCHIVE) // 2
    target = tmp_path / "downloads" / "part.tar.gz"
    partial = target.with_name("part.tar.gz.part")
    with pytest.raises(DataError, match="run again to resume"):
        download.download(f"{server.url}/part.tar.gz", target, SHA256, attempts=1)
    assert partial.stat().st_size == len(ARCHIVE) // 2 and not target.exists()  # nothing half is ever renamed

    download.download(f"{server.url}/part.tar.gz", target, SHA256, attempts=1)
    assert server.requests == [None, f"bytes={len(ARCHIVE) // 2}-"]
    assert target.read_bytes() == ARCHIVE and not partial.exists()


def test_a_dropped_connection_is_resumed_within_the_same_run(server, tmp_path):
    server.cuts, server.cut_after = 2, 50_000
    target = download.download(f"{server.url}/part.tar.gz", tmp_path / "part.tar.gz", SHA256, attempts=3)
    assert server.requests == [None, "bytes=50000-", "bytes=100000-"]
    assert target.read_bytes() == ARCHIVE


def test_a_server_that_ignores_ranges_restarts_the_download_cleanly(server, tmp_path):
    server.ranges = False
    target = tmp_path / "part.tar.gz"
    target.with_name("part.tar.gz.part").write_bytes(b"left over from another file" * 100)
    download.download(f"{server.url}/part.tar.gz", target, SHA256)
    assert server.requests == [f"bytes={27 * 100}-"]  # asked to resume, got the whole file, which replaced the rest
    assert target.read_bytes() == ARCHIVE


def test_a_complete_partial_file_is_verified_without_downloading_again(server, tmp_path):
    target = tmp_path / "part.tar.gz"
    target.with_name("part.tar.gz.part").write_bytes(ARCHIVE)  # killed between the last byte and the rename
    download.download(f"{server.url}/part.tar.gz", target, SHA256)
    assert server.requests == [f"bytes={len(ARCHIVE)}-"]  # answered 416: nothing left to send
    assert target.read_bytes() == ARCHIVE


def test_a_wrong_checksum_is_refused_before_extraction_and_names_the_archive(server, tmp_path):
    archive, destination = tmp_path / "downloads" / "dev-clean.tar.gz", tmp_path / "data"
    wrong = "md5:" + "0" * 32
    with pytest.raises(DataError, match=r"archive dev-clean.tar.gz \(http://127.0.0.1:\d+/dev-clean.tar.gz\) "
                                        r"failed its md5 check: expected 0{32}"):
        download.fetch_and_extract(f"{server.url}/dev-clean.tar.gz", archive, destination, wrong)
    assert list(archive.parent.iterdir()) == []  # the partial file is deleted
    assert not destination.exists()


def test_a_truncated_archive_is_refused_before_extraction(server, tmp_path):
    """Served truncated (its length announced as such, so only the checksum can tell) and left truncated by an
    older download at the archive's path: neither is unpacked."""
    server.payload = ARCHIVE[: len(ARCHIVE) // 3]
    archive, destination = tmp_path / "downloads" / "dev-clean.tar.gz", tmp_path / "data"
    with pytest.raises(DataError, match="archive dev-clean.tar.gz .* failed its sha256 check"):
        download.fetch_and_extract(f"{server.url}/dev-clean.tar.gz", archive, destination, SHA256)
    assert not archive.exists() and not archive.with_name("dev-clean.tar.gz.part").exists()

    archive.write_bytes(ARCHIVE[: len(ARCHIVE) // 2])
    with pytest.raises(DataError, match="archive dev-clean.tar.gz .* truncated or not the published file"):
        download.fetch_and_extract(f"{server.url}/dev-clean.tar.gz", archive, destination, SHA256)
    assert not archive.exists() and not destination.exists()
    assert len(server.requests) == 1  # the archive already there was checked, not downloaded again


def test_a_verified_archive_is_unpacked_once(server, tmp_path):
    archive, destination = tmp_path / "downloads" / "part.tar.gz", tmp_path / "data"
    for _ in range(2):
        download.fetch_and_extract(f"{server.url}/part.tar.gz", archive, destination, SHA256)
    assert (destination / "Corpus" / "part" / "data.bin").stat().st_size == 200_000
    assert len(server.requests) == 1


def test_the_openslr_loop_downloads_verifies_and_writes_manifests(server, tmp_path, make_wav):
    flac = make_wav(tmp_path / "source" / "84-121123-0000.flac", 0.5, subtype="PCM_16").read_bytes()
    server.payload = tar_gz({"LibriSpeech/dev-clean/84/121123/84-121123-0000.flac": flac,
                             "LibriSpeech/dev-clean/84/121123/84-121123.trans.txt": b"84-121123-0000 GO DO YOU HEAR\n"})
    checksums = {"dev-clean": "md5:" + hashlib.md5(server.payload).hexdigest()}
    from speechtrain.data.corpora import read_librispeech, read_manifest

    [manifest] = download.prepare_openslr_subsets(tmp_path / "data", ["dev-clean"], f"{server.url}/{{subset}}.tar.gz",
                                                  checksums, "LibriSpeech", read_librispeech)
    assert [u.text for u in read_manifest(manifest)] == ["GO DO YOU HEAR"]
    assert (tmp_path / "data" / "downloads" / "dev-clean.tar.gz").read_bytes() == server.payload


@pytest.mark.parametrize("corpus, name, resource", [("librispeech", "LIBRISPEECH", 12), ("libritts", "LIBRITTS", 60)])
def test_every_openslr_archive_has_a_checksum_beside_its_url(corpus, name, resource):
    openslr = getattr(load_prepare_module(corpus), name)
    assert openslr.url == f"https://www.openslr.org/resources/{resource}/{{subset}}.tar.gz"
    checksums = openslr.checksums
    assert len(checksums) == 7
    assert all(download.parse_checksum(value)[0] == "md5" for value in checksums.values())
    assert len(set(checksums.values())) == len(checksums)


def test_ljspeech_has_a_checksum_beside_its_url():
    module = load_prepare_module("ljspeech")
    assert module.URL.endswith("LJSpeech-1.1.tar.bz2") and download.parse_checksum(module.CHECKSUM)[0] == "sha256"


def test_a_malformed_checksum_is_a_bug_in_the_table():
    for bad in ("42e2234ba48799c1f50f24a7926300a1", "md5:42e2", "sha1:" + "0" * 40, "md5:" + "g" * 32):
        with pytest.raises(ValueError, match="is not 'md5:<32 hex digits>'"):
            download.parse_checksum(bad)
