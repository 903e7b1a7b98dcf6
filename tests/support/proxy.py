"""A counting HTTP proxy in front of Prefect's API: what the intake asked Prefect to do, seen from
outside (the intake talks to it as its PREFECT_API_URL, and it forwards every request)."""

from __future__ import annotations

import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

CREATE_RUN = re.compile(r"^/api/deployments/[0-9a-f-]+/create_flow_run$")


class CountingProxy:
    """Forwards 127.0.0.1:<port>/api/... to `upstream` and counts requests by method and path
    kind; `creates` holds the idempotency key of every run-creation request."""

    def __init__(self, upstream: str, port: int = 0) -> None:
        self.upstream = upstream.rstrip("/")  # http://127.0.0.1:<port> (no /api)
        self.counts: Counter[str] = Counter()
        self.creates: list[str] = []  # the idempotency key of every run-creation request
        self.create_answers: Counter[int] = Counter()  # and what Prefect answered them
        self.lock = threading.Lock()
        self.client = httpx.Client(timeout=30)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _tunnel(self) -> None:
                """A websocket (Prefect's client events): pass the bytes through, both ways."""
                import socket

                host, port = proxy.upstream.split("//", 1)[1].split(":")
                upstream = socket.create_connection((host, int(port)))
                head = f"{self.requestline}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in self.headers.items()) + "\r\n"
                upstream.sendall(head.encode("latin-1"))

                def pump(src: Any, dst: Any) -> None:
                    try:
                        while chunk := src.recv(65536):
                            dst.sendall(chunk)
                    except OSError:
                        pass
                    finally:
                        for sock in (src, dst):
                            try:
                                sock.shutdown(socket.SHUT_RDWR)
                            except OSError:
                                pass

                back = threading.Thread(target=pump, args=(upstream, self.connection), daemon=True)
                back.start()
                pump(self.connection, upstream)
                back.join()
                upstream.close()
                self.close_connection = True

            def _forward(self) -> None:
                if self.headers.get("Upgrade", "").lower() == "websocket":
                    self._tunnel()
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?", 1)[0]
                if path == "/_proxy/creates":  # for a proxy in another process (the bench)
                    import json

                    with proxy.lock:
                        answer = json.dumps({"creates": proxy.creates, "answers": proxy.create_answers}).encode()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                    return
                create_key = None
                if self.command == "POST" and CREATE_RUN.match(path):
                    import json

                    create_key = json.loads(body or b"{}").get("idempotency_key") or ""
                with proxy.lock:
                    proxy.counts[f"{self.command} {path}"] += 1
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "content-length", "connection", "accept-encoding")}
                try:
                    r = proxy.client.request(self.command, proxy.upstream + self.path, content=body, headers=headers)
                    if create_key is not None:
                        with proxy.lock:
                            proxy.creates.append(create_key)
                            proxy.create_answers[r.status_code] += 1
                except httpx.TransportError:
                    self.send_response(502)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _forward

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/api"

    def creates_for(self, incident_id: str) -> int:
        with self.lock:
            return self.creates.count(f"sevflow-intake/{incident_id}")

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.client.close()


if __name__ == "__main__":  # python -m tests.support.proxy <upstream> <port>: in a process of its own
    import sys

    CountingProxy(sys.argv[1], int(sys.argv[2])).thread.join()
