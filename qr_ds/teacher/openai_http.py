"""OpenAI-compatible chat-completions client (OpenAI, Gemini's OpenAI endpoint, ``vllm serve``).

Async with bounded concurrency; retries 429, 5xx, timeouts and broken bodies with exponential
backoff and jitter, waiting at least as long as a Retry-After header says. Every final failure
comes back as a reason string, never an exception, so one bad request cannot stop a run.
The API key is read from the env var named in config and only ever placed in a request header.
"""
from __future__ import annotations

import asyncio
import email.utils
import json
import os
import random
import time
from typing import Iterable

import httpx

from qr_ds.config import ConfigError
from qr_ds.teacher.base import Completion, OnDone, Request
from qr_ds.teacher.config import TeacherConfig

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


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
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env)
            if not key:
                raise ConfigError(f"config key 'teacher.api_key_env': env var {cfg.api_key_env} is not set")
            self._headers["Authorization"] = f"Bearer {key}"
        self._url = cfg.base_url.rstrip("/") + "/chat/completions"
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
                on_done(req, comp)

            await asyncio.gather(*(one(r) for r in requests))

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
        except httpx.TransportError as e:
            raise Retryable(f"connection error ({type(e).__name__})") from None
        if resp.status_code in RETRY_STATUS:
            raise Retryable(f"http {resp.status_code}", parse_retry_after(resp.headers.get("retry-after")))
        if resp.status_code >= 400:
            raise Fatal(f"http {resp.status_code}: {_error_message(resp)}")
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
        usage = data.get("usage") or {}
        return Completion(
            text=text,
            tokens_in=int(usage.get("prompt_tokens") or 0),
            tokens_out=int(usage.get("completion_tokens") or 0),
            finish_reason=choice.get("finish_reason"),
        )


def _error_message(resp: httpx.Response) -> str:
    try:
        err = resp.json().get("error", {})
        msg = err.get("message") if isinstance(err, dict) else str(err)
    except (ValueError, AttributeError):
        msg = resp.text
    return (msg or "").strip()[:200]
