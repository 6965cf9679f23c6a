"""A throttled cursor-page server over a fixed event list, in a thread (for tests whose daemon is a subprocess)."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import orjson


class PageFeed:
    """Serves `GET /events?cursor=N&limit=L` → {"events": [...], "next_cursor": "M"} with a delay per page."""

    def __init__(self, events: list[dict], *, delay_s: float = 0.0, max_limit: int = 1000) -> None:
        self.events = events
        self.delay_s = delay_s
        self.max_limit = max_limit
        self.served = 0
        feed = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                q = parse_qs(urlparse(self.path).query)
                start = int(q.get("cursor", ["0"])[0] or 0)
                limit = min(int(q.get("limit", ["100"])[0]), feed.max_limit)
                if feed.delay_s:
                    time.sleep(feed.delay_s)
                page = feed.events[start:start + limit]
                feed.served = max(feed.served, start + len(page))
                body = orjson.dumps({"events": page, "next_cursor": str(start + len(page))})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/events"

    @property
    def done(self) -> bool:
        return self.served >= len(self.events)

    def __enter__(self) -> PageFeed:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
