"""Backpressure: a big upload to a slow upstream and a big download to a slow
client must not be buffered in the proxy. The proxy runs as a subprocess and
its RSS is sampled from /proc while the bytes flow.

The default run moves 128 MiB each way; the slow run moves 1 GiB."""

import socket
import threading
import time

import pytest

from proxy_harness import free_port, rss_bytes, spawn, stop_proc, wait_port

APP = """
import os
from sluiceway.proxy import HttpPeer, ProxyHttp

class App(ProxyHttp):
    def upstream_peer(self, session, ctx):
        return HttpPeer(("127.0.0.1", int(os.environ["ORIGIN_PORT"])))
"""

MiB = 1 << 20


class _SlowOrigin:
    """Raw-socket origin: reads uploads slowly, or sends downloads fast."""

    def __init__(self, size):
        self.size = size
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(8)
        self.port = self.ls.getsockname()[1]
        self.received = 0
        self.t = threading.Thread(target=self._serve, daemon=True)
        self.t.start()

    def _serve(self):
        c, _ = self.ls.accept()
        with c:
            head = b""
            while b"\r\n\r\n" not in head:
                head += c.recv(4096)
            head, _, rest = head.partition(b"\r\n\r\n")
            if head.startswith(b"POST"):
                got = len(rest)
                while got < self.size:
                    n = len(c.recv(64 * 1024))
                    if not n:
                        break
                    got += n
                    time.sleep(0.001)  # a slow upstream
                self.received = got
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%d" % (len(str(got)), got))
            else:
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % self.size)
                block = b"d" * MiB
                sent = 0
                while sent < self.size:
                    c.sendall(block)
                    sent += len(block)

    def close(self):
        self.ls.close()


def _proxy(tmp_path, origin_port):
    (tmp_path / "bpapp.py").write_text(APP)
    port = free_port()
    p = spawn(["-m", "sluiceway.cli", "run", "bpapp:App", "-l", f"127.0.0.1:{port}"],
              {"ORIGIN_PORT": str(origin_port), "PYTHONPATH": str(tmp_path)})
    wait_port(port, p)
    return p, port


def _sample(pid, stop, out):
    while not stop.is_set():
        out.append(rss_bytes(pid))
        time.sleep(0.02)


def _upload(tmp_path, size):
    origin = _SlowOrigin(size)
    p, port = _proxy(tmp_path, origin.port)
    try:
        base = rss_bytes(p.pid)
        samples, stop = [], threading.Event()
        th = threading.Thread(target=_sample, args=(p.pid, stop, samples))
        th.start()
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        block = b"u" * MiB
        for _ in range(size // MiB):
            s.sendall(block)
        resp = b""
        while not resp.endswith(str(size).encode()):
            chunk = s.recv(4096)
            if not chunk:
                break
            resp += chunk
        s.close()
        stop.set()
        th.join()
        assert origin.received == size
        assert resp.startswith(b"HTTP/1.1 200")
        return max(samples) - base
    finally:
        stop_proc(p)
        origin.close()


def _download(tmp_path, size):
    origin = _SlowOrigin(size)
    p, port = _proxy(tmp_path, origin.port)
    try:
        base = rss_bytes(p.pid)
        samples, stop = [], threading.Event()
        th = threading.Thread(target=_sample, args=(p.pid, stop, samples))
        th.start()
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
        s.sendall(b"GET /down HTTP/1.1\r\nHost: x\r\n\r\n")
        got = 0
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(4096)
        got = len(head.partition(b"\r\n\r\n")[2])
        while got < size:
            n = len(s.recv(64 * 1024))
            if not n:
                break
            got += n
            time.sleep(0.001)  # a slow client
        s.close()
        stop.set()
        th.join()
        assert got == size
        return max(samples) - base
    finally:
        stop_proc(p)
        origin.close()


def test_upload_to_slow_upstream_is_not_buffered(tmp_path):
    assert _upload(tmp_path, 128 * MiB) < 32 * MiB


def test_download_to_slow_client_is_not_buffered(tmp_path):
    assert _download(tmp_path, 128 * MiB) < 32 * MiB


@pytest.mark.slow
def test_1gib_upload_and_download_rss(tmp_path):
    up = _upload(tmp_path, 1024 * MiB)
    down = _download(tmp_path, 1024 * MiB)
    print(f"RSS rise: upload {up / MiB:.1f} MiB, download {down / MiB:.1f} MiB")
    assert up < 32 * MiB and down < 32 * MiB
