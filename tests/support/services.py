"""Local HTTP services: the production app's health check and a webhook receiver."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class _Server:
    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class HealthApp(_Server):
    """The production app: healthy when the deployed build says `healthy` and its
    reloaded configuration (`deploy_dir/app.env`, if any) has a non-zero POOL_SIZE, and the
    external dependency it uses (the URL in `deploy_dir/upstream.url`, if any) answers 2xx.

    Deploying = copying the build into `deploy_dir/current`; each deploy appends the commit
    to `deploy_dir/deploys.log`, so tests can count deploys.
    """

    def __init__(self, deploy_dir: Path) -> None:
        self.deploy_dir = deploy_dir
        self.requests: list[dict[str, str]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                app: HealthApp = self.server.owner  # type: ignore[attr-defined]
                app.requests.append(dict(self.headers))
                current = app.deploy_dir / "current"
                text = current.read_text() if current.exists() else ""
                env = app.deploy_dir / "app.env"
                pool_ok = not env.exists() or "POOL_SIZE=0" not in env.read_text()
                upstream = app.deploy_dir / "upstream.url"
                upstream_ok = not upstream.exists() or _answers(upstream.read_text().strip())
                healthy = "healthy" in text and "unhealthy" not in text and pool_ok and upstream_ok
                body = json.dumps({"status": "ok" if healthy else "down", "deployed": text.strip()}).encode()
                self.send_response(200 if healthy else 503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(Handler)

    @property
    def health_url(self) -> str:
        return f"{self.url}/api/health"

    def deployed(self) -> str:
        current = self.deploy_dir / "current"
        return current.read_text().strip() if current.exists() else ""

    def deploys(self) -> list[str]:
        log = self.deploy_dir / "deploys.log"
        return log.read_text().split() if log.exists() else []


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback test URL
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError):
        return False


class Answering(_Server):
    """A URL that answers GET with `status` and `body` (both settable while it runs): the
    control URL, an external dependency, a users metric, a log endpoint. `delay` seconds
    before each answer (the probe bench's slow endpoints). Records the paths asked."""

    def __init__(self, status: int = 200, body: str = "ok", delay: float = 0.0) -> None:
        self.status, self.body, self.delay = status, body, delay
        self.asked: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                me: Answering = self.server.owner  # type: ignore[attr-defined]
                me.asked.append(self.path)
                if me.delay:
                    threading.Event().wait(me.delay)
                body = me.body.encode()
                self.send_response(me.status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(Handler)


class ProbeService(_Server):
    """An external probe (a status checker somewhere else): `GET /check?url=X` asks X and
    answers with X's status code (502 when X does not answer)."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                target = (query.get("url") or [""])[0]
                try:
                    with urllib.request.urlopen(target, timeout=5) as response:  # noqa: S310 - loopback
                        status = response.status
                except urllib.error.HTTPError as exc:
                    status = exc.code
                except (urllib.error.URLError, OSError, ValueError):
                    status = 502
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(Handler)

    @property
    def check_url(self) -> str:
        return f"{self.url}/check"


class WebhookReceiver(_Server):
    """A notification receiver: records every request it gets."""

    def __init__(self, status: int = 200) -> None:
        self.received: list[dict[str, Any]] = []
        self.status = status  # answer 500 to play a receiver that is down

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                receiver: WebhookReceiver = self.server.owner  # type: ignore[attr-defined]
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    body = {"raw": raw.decode(errors="replace")}
                receiver.received.append({"path": self.path, "headers": dict(self.headers), "body": body})
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(Handler)


class AwsStandIn(_Server):
    """Plays the AWS endpoints SNS deliveries point at: serves the signing certificate and
    records the GET that confirms a subscription (trusted by the SNS block's `trusted_origins`)."""

    def __init__(self, certificate: bytes) -> None:
        self.certificate = certificate
        self.gets: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                aws: AwsStandIn = self.server.owner  # type: ignore[attr-defined]
                aws.gets.append(self.path)
                body = aws.certificate if self.path.endswith(".pem") else b"<ConfirmSubscriptionResponse/>"
                if "unavailable" in self.path:  # AWS having a bad moment
                    body = b"<Error>ServiceUnavailable</Error>"
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(Handler)
