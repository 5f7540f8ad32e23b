"""StubChatServer: a real HTTP server on 127.0.0.1 speaking OpenAI chat-completions, with no model.

It stands in for a teacher (or judge) endpoint in tests and the client benchmark: replies are a
fixed function of the prompt and seed (``reply``; by default one ending "The answer is 42."), after
an optional fixed latency, and a ``faults`` callback can make any request fail in a chosen way (429
with Retry-After, 500, a hang past the client's timeout, malformed JSON, a truncated body, an empty
reply, no choices, and 400/401 whose error body echoes the API key as some servers do)
deterministically per (prompt, attempt).
"""
from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

FAULTS = ("ok", "429", "500", "hang", "malformed", "truncated", "empty", "no_choices", "400", "401")
Faults = Callable[[str, int], str]  # (prompt, 0-based attempt for that prompt) -> one of FAULTS
Reply = Callable[[str, "int | None"], str]  # (prompt, seed) -> the reply's text


@dataclass
class Seen:
    prompt: str
    attempt: int
    action: str
    at: float  # time.monotonic() when the request arrived
    authorization: str | None


def stub_reply(prompt: str, seed: int | None) -> str:
    return f"Stub reply (seed {seed}) to: {prompt[:60]}\nThe answer is 42."


class StubChatServer:
    def __init__(self, latency_s: float = 0.0, faults: Faults | None = None, hang_s: float = 5.0,
                 retry_after: str = "1", reply: Reply = stub_reply):
        self.latency_s, self.hang_s, self.retry_after = latency_s, hang_s, retry_after
        self.reply = reply  # a pipeline test answers with the gold, so paths survive the answer check
        self.faults = faults or (lambda prompt, attempt: "ok")
        self.seen: list[Seen] = []
        self._attempts: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> "StubChatServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _decide(self, prompt: str, auth: str | None) -> str:
        with self._lock:
            attempt = self._attempts[prompt]
            self._attempts[prompt] += 1
            action = self.faults(prompt, attempt)
            self.seen.append(Seen(prompt, attempt, action, time.monotonic(), auth))
        return action

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None, length: int | None = None):
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body) if length is None else length))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("health"):
                    self._send(200, b"{}")
                else:
                    self._send(404, b'{"error": {"message": "not found"}}')

            def do_POST(self) -> None:
                req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                prompt = req["messages"][-1]["content"]
                action = server._decide(prompt, self.headers.get("Authorization"))
                time.sleep(server.latency_s)
                if action == "429":
                    return self._send(429, b'{"error": {"message": "rate limited"}}', {"Retry-After": server.retry_after})
                if action == "500":
                    return self._send(500, b'{"error": {"message": "internal error"}}')
                if action == "hang":
                    time.sleep(server.hang_s)
                    return self._send(504, b"{}")
                if action == "malformed":
                    return self._send(200, b'{"choices": [{"message": {"content": "cut')
                if action == "no_choices":
                    return self._send(200, b'{"id": "stub", "object": "chat.completion", "choices": []}')
                if action in ("400", "401"):
                    key = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
                    msg = {"400": f"bad request for key {key}", "401": f"Incorrect API key provided: {key}"}[action]
                    return self._send(int(action), json.dumps({"error": {"message": msg}}).encode())
                text = "" if action == "empty" else server.reply(prompt, req.get("seed"))
                body = json.dumps({
                    "id": "stub", "object": "chat.completion", "model": req.get("model"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split()),
                              "total_tokens": len(prompt.split()) + len(text.split())},
                }).encode()
                if action == "truncated":
                    self._send(200, body[: len(body) // 2], length=len(body))
                    self.close_connection = True
                    return None
                return self._send(200, body)

        return Handler
