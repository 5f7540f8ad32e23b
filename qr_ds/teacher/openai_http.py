"""OpenAI-compatible chat-completions client (OpenAI, Gemini's OpenAI endpoint, ``vllm serve``).

Async with bounded concurrency; retries 429, 5xx, timeouts and broken bodies with exponential
backoff and jitter, waiting at least as long as a Retry-After header says. An empty reply is a
failed try too. Every final failure of one request comes back as a reason string, so one bad
request cannot stop a run; but 401/403/404 (wrong key, URL or model) raise TeacherRefused at
once, since every other request would fail the same way. The first request goes alone, so such
a mistake costs one request, not a burst of ``concurrency``.
The API key is read from the env var named in config and only placed in a request header; a
server that echoes it (in an error body or a reply) has it replaced by ``<redacted>``, and so has
anything shaped like a secret whatever its value: a URL's ``user:password@``, an ``Authorization``,
``Basic`` or ``Bearer`` value. Credentials in ``base_url`` become Basic auth and leave the URL.
A refused connection before the server has answered once stops the run at once, naming the URL:
retries are for a server that has answered before.
"""
from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import os
import random
import re
import time
from typing import Iterable

import httpx

from qr_ds.config import ConfigError
from qr_ds.teacher.base import Completion, OnDone, Request, TeacherRefused, TeacherUnreachable
from qr_ds.teacher.config import TeacherConfig, split_userinfo

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
REFUSED_STATUS = {401, 403, 404}
REDACTED = "<redacted>"
# secrets by shape, for what a server or a library says (errors), never for a reply's text (training
# data: "basic algebra: 2x" is prose): URL userinfo, and the value after an auth scheme or header
_SHAPES = [(re.compile(r"\b(\w++://)[^/\s@]++@"), r"\1" + REDACTED + "@"),
           (re.compile(r"(?i)\b(basic|bearer|token|authorization:?)(\s+)[A-Za-z0-9+/=._~:-]{6,}"),
            r"\1\2" + REDACTED)]


def redact_shapes(text: str) -> str:
    for pattern, repl in _SHAPES:
        text = pattern.sub(repl, text)
    return text


def _config_key(cfg: TeacherConfig, name: str) -> str:
    return f"{'judge' if type(cfg).__name__ == 'JudgeConfig' else 'teacher'}.{name}"


class Retryable(Exception):
    """A failed try worth repeating; ``reason`` is what the record gets if tries run out."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class Fatal(Exception):
    """A failure that retrying cannot fix (400, 401, 404, ...)."""


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class OpenAITeacher:
    def __init__(self, cfg: TeacherConfig):
        self.cfg = cfg
        self.model = cfg.model
        self._headers = {"Content-Type": "application/json"}
        self._key = None
        self._secrets: list[str] = []
        if cfg.api_key_env:
            self._key = os.environ.get(cfg.api_key_env)
            if not self._key:
                raise ConfigError(f"config key '{_config_key(cfg, 'api_key_env')}': env var {cfg.api_key_env} is not set")
            self._headers["Authorization"] = f"Bearer {self._key}"
            self._secrets.append(self._key)
        base_url, credentials = split_userinfo(cfg.base_url)
        credentials = credentials or getattr(cfg, "credentials", None)
        if credentials and not self._key:
            user, password = credentials
            basic = base64.b64encode(f"{user}:{password}".encode()).decode()
            self._headers["Authorization"] = f"Basic {basic}"
            self._secrets += [s for s in (password, basic, f"{user}:{password}") if len(s) >= 4]
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._answered = False  # has the server answered once? until then a refused connection is final
        self._rng = random.Random()  # jitter only: never affects outputs

    def run(self, requests: Iterable[Request], on_done: OnDone) -> None:
        asyncio.run(self._run_all(list(requests), on_done))

    async def _run_all(self, requests: list[Request], on_done: OnDone) -> None:
        sem = asyncio.Semaphore(self.cfg.concurrency)
        limits = httpx.Limits(max_connections=self.cfg.concurrency, max_keepalive_connections=self.cfg.concurrency)
        async with httpx.AsyncClient(headers=self._headers, timeout=self.cfg.timeout_s, limits=limits) as client:

            async def one(req: Request) -> None:
                async with sem:
                    comp = await self.complete(client, req)
                on_done(req, self.redacted(comp))

            if requests:
                await one(requests[0])  # alone: a wrong key, URL or model is found with one request
                await _all_or_stop([one(r) for r in requests[1:]])

    def redact(self, text: str | None, shapes: bool = True) -> str | None:
        """``text`` with the API key and URL credentials replaced, by value (servers echo them in error
        bodies: "Incorrect API key: sk-...") and, unless ``shapes`` is off, by shape (a Basic value, a
        URL's userinfo)."""
        if text is None:
            return text
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, REDACTED)
        return redact_shapes(text) if shapes else text

    def redacted(self, comp: Completion) -> Completion:
        """A reply's text is the teacher's path: only our own secrets are taken out of it, by value."""
        comp.text, comp.error = self.redact(comp.text, shapes=False), self.redact(comp.error)
        return comp

    def body(self, req: Request) -> dict:
        s = self.cfg.sampling
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": req.prompt}],
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_tokens": s.max_tokens,
            "seed": req.seed,
        }

    async def complete(self, client: httpx.AsyncClient, req: Request) -> Completion:
        body = self.body(req)
        tries = self.cfg.max_retries + 1
        last = "no tries"
        for attempt in range(tries):
            try:
                comp = await self._try_once(client, body)
                comp.tries = attempt + 1
                return comp
            except Fatal as e:
                return Completion(None, error=str(e), tries=attempt + 1)
            except Retryable as e:
                last = e.reason
                if attempt + 1 < tries:
                    wait = min(self.cfg.backoff_max_s, self.cfg.backoff_s * 2**attempt)
                    wait *= 0.5 + self._rng.random()  # jitter spreads out synchronized retries
                    if e.retry_after is not None:
                        wait = max(wait, e.retry_after)
                    await asyncio.sleep(wait)
        suffix = f" after {tries} tries" if tries > 1 else ""
        return Completion(None, error=f"{last}{suffix}", tries=tries)

    async def _try_once(self, client: httpx.AsyncClient, body: dict) -> Completion:
        try:
            resp = await client.post(self._url, json=body)
        except httpx.TimeoutException:
            raise Retryable("timeout") from None
        except httpx.RemoteProtocolError:
            # the server closed before sending all it announced (short body, dropped connection)
            raise Retryable("truncated body") from None
        except httpx.ConnectError as e:
            if not self._answered:  # a wrong host or port, or no server yet: 60 retries would not help
                raise TeacherUnreachable(
                    f"config key '{_config_key(self.cfg, 'base_url')}': cannot connect to {self._url} "
                    f"({self.redact(str(e)) or type(e).__name__}); is the server running at that address? "
                    "Stopped before any retry: it never answered.") from None
            raise Retryable(f"connection error ({type(e).__name__})") from None
        except httpx.TransportError as e:
            raise Retryable(f"connection error ({type(e).__name__})") from None
        self._answered = True
        if resp.status_code in REFUSED_STATUS:
            key_hint = f", the key in env var {self.cfg.api_key_env}" if self.cfg.api_key_env else ", the API key"
            raise TeacherRefused(
                f"{self._url} refused the request (http {resp.status_code}: {_error_message(resp, self.redact)!r}); "
                f"check model {self.model!r}, base_url{key_hint}. Stopped: every request would fail the same way.")
        if resp.status_code in RETRY_STATUS:
            raise Retryable(f"http {resp.status_code}", parse_retry_after(resp.headers.get("retry-after")))
        if resp.status_code >= 400:
            raise Fatal(f"http {resp.status_code}: {_error_message(resp, self.redact)}")
        try:
            data = json.loads(resp.content)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise Retryable("malformed JSON") from None
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"]
            if not isinstance(text, str):
                raise TypeError("content is not a string")
        except (KeyError, IndexError, TypeError) as e:
            raise Retryable(f"unexpected response shape ({e})") from None
        if not text.strip():
            raise Retryable("empty reply")
        usage = data.get("usage") or {}
        return Completion(
            text=text,
            tokens_in=int(usage.get("prompt_tokens") or 0),
            tokens_out=int(usage.get("completion_tokens") or 0),
            finish_reason=choice.get("finish_reason"),
        )


def _error_message(resp: httpx.Response, redact) -> str:
    """The server's error message, redacted before it is cut short (a cut could keep half a key)."""
    try:
        err = resp.json().get("error", {})
        msg = err.get("message") if isinstance(err, dict) else str(err)
    except (ValueError, AttributeError):
        msg = resp.text
    return redact((msg or "").strip())[:200]


async def _all_or_stop(coros: list) -> None:
    """Run all; on the first exception (TeacherRefused) cancel the rest and raise it."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    if not tasks:
        return
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for t in done:
        if t.exception():
            raise t.exception()
