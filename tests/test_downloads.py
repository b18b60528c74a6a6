"""Downloads against a real HTTP server on 127.0.0.1 (a thread of the test) serving files in
OpenAI's bucket layout, with HTTP Range as Azure blob storage implements it: an interrupted download
resumes and ends byte-identical; a truncated or corrupt one is detected and never cached; a missing
file says where to put the data by hand; query sets flow from the server into queries."""

import base64
import hashlib
import http.server
import json
import re
import threading

import pytest
from upstream_data import story_name, tldr_posts, write_cnndm

from machinery import tasks
from machinery.data import cache_dir


class Bucket(http.server.BaseHTTPRequestHandler):
    """Serves `files` (path -> bytes). Knobs: cut[path] = n sends the full Content-Length but only
    n bytes, then closes (once when cut_once, else every time); wrong[path] = bytes served instead
    of the file while announcing the real file's MD5; ranges=False ignores Range (sends 200 and the
    whole file); md5=False sends no MD5 header."""

    files: dict = {}
    cut: dict = {}
    wrong: dict = {}
    cut_once, ranges, md5 = True, True, True
    log: list = []

    def do_GET(self):
        path = self.path.lstrip("/")
        self.log.append((path, self.headers.get("Range")))
        if path not in self.files:
            self.send_error(404, "The specified blob does not exist.")
            return
        real = self.files[path]
        body = self.wrong.get(path, real)
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if m and self.ranges:
            start = int(m[1])
            if start >= len(body):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        if self.md5:
            digest = base64.b64encode(hashlib.md5(real).digest()).decode()
            self.send_header("x-ms-blob-content-md5", digest)  # Azure: the whole blob's MD5
        self.end_headers()
        n = self.cut.get(path)
        if n is not None:
            if self.cut_once:
                del self.cut[path]
            self.wfile.write(body[start:n])  # then the connection closes: a short body
            return
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    """A fresh server on a free port of 127.0.0.1; RLHF_DATA_URL points at it, RLHF_CACHE at
    tmp."""

    class Handler(Bucket):
        files, cut, wrong, log = {}, {}, {}, []

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("RLHF_DATA_URL", f"http://127.0.0.1:{server.server_address[1]}/")
    monkeypatch.setenv("RLHF_CACHE", str(tmp_path / "cache"))
    yield Handler
    server.shutdown()
    server.server_close()
    thread.join()


TLDR = "tldr/train-subset.json"


def tldr_bytes(n=400) -> bytes:
    return json.dumps(tldr_posts(n), indent=1).encode()


def test_interrupted_download_resumes_byte_identical(bucket, capsys):
    data = tldr_bytes()
    bucket.files[TLDR] = data
    bucket.cut[TLDR] = 70_000
    dest = cache_dir() / "openai" / TLDR
    part = dest.with_name(dest.name + ".part")
    with pytest.raises(tasks.DownloadError, match=rf"cut off at 70,000 of {len(data):,} bytes"):
        tasks.download_openai(TLDR)
    assert not dest.exists() and part.read_bytes() == data[:70_000]  # never used as the file
    assert tasks.download_openai(TLDR) == dest
    assert dest.read_bytes() == data and not part.exists()
    assert bucket.log == [(TLDR, None), (TLDR, "bytes=70000-")]  # the second asked for the rest
    assert "download train-subset.json" in capsys.readouterr().err  # the progress bar
    tasks.download_openai(TLDR)  # cached: no request
    assert len(bucket.log) == 2


def test_server_without_range_support_restarts(bucket):
    data = tldr_bytes()
    bucket.files[TLDR], bucket.cut[TLDR], bucket.ranges = data, 50_000, False
    with pytest.raises(tasks.DownloadError, match="cut off"):
        tasks.download_openai(TLDR)
    assert tasks.download_openai(TLDR).read_bytes() == data  # a 200 answer: written from 0


def test_truncated_download_is_never_used(bucket):
    data = tldr_bytes()
    bucket.files[TLDR], bucket.cut[TLDR], bucket.cut_once = data, 10_000, False
    dest = cache_dir() / "openai" / TLDR
    for _ in range(3):  # each try resumes, and each is cut again
        with pytest.raises(tasks.DownloadError, match="cut off at 10,000.*Run again to resume"):
            tasks.download_openai(TLDR)
        assert not dest.exists()


def test_corrupt_download_is_detected_and_deleted(bucket):
    data = tldr_bytes()
    bad = bytearray(data)
    bad[1000] ^= 1  # one flipped bit, same length: only the MD5 can tell
    bucket.files[TLDR], bucket.wrong[TLDR] = data, bytes(bad)
    dest = cache_dir() / "openai" / TLDR
    with pytest.raises(tasks.DownloadError, match="corrupt: its MD5 does not match.*deleted"):
        tasks.download_openai(TLDR)
    assert not dest.exists() and not dest.with_name(dest.name + ".part").exists()
    del bucket.wrong[TLDR]
    assert tasks.download_openai(TLDR).read_bytes() == data


def test_invalid_file_without_md5_is_detected_by_parsing(bucket):
    # a server without MD5 serving a whole-looking but cut JSON list, and a story that is not UTF-8
    bucket.md5 = False
    bucket.files[TLDR] = tldr_bytes()[:-300]
    story = "datasets/cnndm/cache_train/cnn/stories/x.story"
    bucket.files[story] = "caf\u00e9".encode("latin-1")
    with pytest.raises(tasks.DownloadError, match=r"corrupt: it is not a valid \.json file"):
        tasks.download_openai(TLDR)
    with pytest.raises(tasks.DownloadError, match=r"corrupt: it is not a valid \.story file"):
        tasks.download_openai(story)
    assert not list((cache_dir() / "openai").rglob("*.*s*"))  # nothing cached, no .part


def test_missing_file_says_where_to_put_it(bucket):
    dest = cache_dir() / "openai" / "tldr" / "valid-subset.json"
    with pytest.raises(tasks.DownloadError) as e:
        tasks.download_openai("tldr/valid-subset.json")
    msg = str(e.value)
    assert "HTTP 404" in msg and "tldr/valid-subset.json" in msg
    assert f"put it at {dest}" in msg and "--query-data" in msg and "curl" in msg
    assert not dest.parent.exists() or not list(dest.parent.iterdir())


def test_query_sets_from_the_server_equal_local_copies(bucket, tmp_path):
    """TL;DR and CNN/DM queries read through the download code equal those read from the same
    files given by path."""
    bucket.files[TLDR] = tldr_bytes(40)
    local_tldr = tmp_path / "t.json"
    local_tldr.write_bytes(bucket.files[TLDR])
    got = tasks.QuerySource("tldr", "train").next_queries(10)
    assert got == tasks.QuerySource("tldr", "train", query_data=str(local_tldr)).next_queries(10)
    stories = {
        f"http://www.cnn.com/{i}.html": f"Line {i} of the story.\nMore.\n\n@highlight\n\nH{i}"
        for i in range(5)
    }
    folder = write_cnndm(tmp_path / "cnndm", stories)
    bucket.files["datasets/cnndm/url_lists/all_train.txt"] = (
        folder / "url_lists" / "all_train.txt"
    ).read_bytes()
    for url in stories:
        rel = f"cache_train/{story_name(url)}"
        bucket.files[f"datasets/cnndm/{rel}"] = (folder / rel).read_bytes()
    got = tasks.QuerySource("cnndm", "train").next_queries(5)
    assert got == tasks.QuerySource("cnndm", "train", query_data=str(folder)).next_queries(5)
    assert sorted(q.reference for q in got) == [f"H{i}" for i in range(5)]
