"""`openai:BASE_URL`: any OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp
server, SGLang, hosted APIs).

- `--concurrency N` requests in flight, kept full by a thread pool (each thread blocks on
  one HTTP request, so threads are the right tool; the GIL is released while waiting).
- Retries with exponential backoff (base `backoff_s`, doubling, +-10 % jitter, capped at
  60 s; a `Retry-After` header wins) on HTTP 429, any 5xx, timeouts and dropped
  connections; other 4xx errors are the caller's mistake and fail at once.
- A per-request timeout; the key comes from `OPENAI_API_KEY` when set.
- Greedy decoding (temperature 0) so that reruns are comparable.
Only the standard library is used for HTTP, so the kit needs no client package.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import os
import random
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from http.client import HTTPException
from pathlib import Path
from typing import TypedDict

from medfuse.errors import MedfuseError
from medfuse.eval.models.base import GenerationError, ModelAdapter
from medfuse.eval.prompts import Prompt

RETRY_STATUS = frozenset({408, 409, 425, 429}) | frozenset(range(500, 600))
MAX_BACKOFF_S = 60.0


class EndpointOptions(TypedDict, total=False):
    """How requests reach an endpoint; each key is an `OpenAICompatibleModel` argument."""

    concurrency: int  # requests kept in flight
    timeout_s: float  # per-request timeout
    max_retries: int  # retries on 429 / 5xx / timeouts
    backoff_s: float  # first retry delay, doubled each retry


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class OpenAICompatibleModel(ModelAdapter):
    """Chat completions against `base_url` (e.g. ``http://127.0.0.1:8000/v1``)."""

    accepts_images = True

    def __init__(
        self,
        base_url: str,
        model_name: str | None = None,
        concurrency: int = 8,
        timeout_s: float = 120.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        api_key: str | None = None,
        temperature: float = 0.0,
    ):
        if not base_url.startswith(("http://", "https://")):
            raise MedfuseError(f"openai:{base_url}: the endpoint must be an http(s) URL, e.g. openai:http://127.0.0.1:8000/v1")
        if concurrency < 1:
            raise MedfuseError(f"--concurrency must be >= 1, got {concurrency}")
        self.base_url = base_url.rstrip("/")
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.temperature = temperature
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.model_name = model_name or self._first_served_model()
        self.model_id = f"openai:{self.base_url}#{self.model_name}"
        self.requests_sent = 0  # HTTP attempts, retries included (for tests and benchmarks)

    # ------------------------------------------------------------------ HTTP

    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        return h

    def _first_served_model(self) -> str:
        """The first model id the endpoint lists (vLLM/llama.cpp serve one model)."""
        req = urllib.request.Request(f"{self.base_url}/models", headers=self._headers())
        try:
            with urllib.request.urlopen(req, timeout=min(self.timeout_s, 30)) as resp:
                data = json.load(resp)
            return str(data["data"][0]["id"])
        except (urllib.error.URLError, OSError, HTTPException, ValueError, RecursionError, KeyError, IndexError,
                TypeError):
            raise MedfuseError(
                f"openai:{self.base_url}: could not list the served models; pass --model-name NAME"
            ) from None

    def _body(self, prompt: Prompt) -> dict:
        if prompt.images:
            content: list[dict] | str = [{"type": "text", "text": prompt.user}]
            for path in prompt.images:
                content.append({"type": "image_url", "image_url": {"url": _data_url(path)}})
        else:
            content = prompt.user
        return {
            "model": self.model_name,
            "messages": [{"role": "system", "content": prompt.system}, {"role": "user", "content": content}],
            "max_tokens": prompt.max_new_tokens,
            "temperature": self.temperature,
        }

    def _post_once(self, body: bytes) -> str:
        req = urllib.request.Request(f"{self.base_url}/chat/completions", data=body, headers=self._headers(), method="POST")
        self.requests_sent += 1
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                data = json.load(resp)
        except urllib.error.HTTPError as e:
            detail = _error_detail(e)
            if e.code in RETRY_STATUS:
                raise _Retryable(f"HTTP {e.code}{detail}", _retry_after(e.headers.get("Retry-After"))) from None
            raise GenerationError(f"{self.base_url}: HTTP {e.code}{detail}") from None
        except (TimeoutError, socket.timeout):
            raise _Retryable(f"no answer within {self.timeout_s:g} s") from None
        except (urllib.error.URLError, ConnectionError, HTTPException, OSError) as e:
            raise _Retryable(f"connection failed ({e.__class__.__name__})") from None
        except (ValueError, RecursionError):  # RecursionError: nested too deeply to parse
            raise _Retryable("response is not JSON") from None
        try:
            message = data["choices"][0]["message"]
        except (KeyError, IndexError, TypeError):
            raise GenerationError(f"{self.base_url}: response has no choices[0].message") from None
        return message.get("content") or ""

    def _request(self, prompt: Prompt) -> str:
        body = json.dumps(self._body(prompt), ensure_ascii=False).encode("utf-8")
        last = ""
        for attempt in range(self.max_retries + 1):
            try:
                return self._post_once(body)
            except _Retryable as e:
                last = str(e)
                if attempt == self.max_retries:
                    break
                delay = e.retry_after if e.retry_after is not None else self.backoff_s * 2**attempt
                time.sleep(min(MAX_BACKOFF_S, delay) * random.uniform(0.9, 1.1))
        raise GenerationError(f"{self.base_url}: gave up after {self.max_retries + 1} attempts ({last})")

    # ------------------------------------------------------------------ interface

    def generate_iter(self, prompts: Sequence[Prompt]) -> Iterator[tuple[int, str | GenerationError]]:
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="medfuse-eval")
        try:
            futures = {pool.submit(self._request, p): i for i, p in enumerate(prompts)}
            for fut in as_completed(futures):
                i = futures[fut]
                try:
                    yield i, fut.result()
                except GenerationError as e:
                    yield i, e
        finally:
            # On interruption, drop queued requests; the ones in flight finish or time out.
            pool.shutdown(wait=False, cancel_futures=True)


def _data_url(path: str) -> str:
    mime = mimetypes.guess_type(path)[0] or "image/png"
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise GenerationError(f"{path}: cannot read image ({e.__class__.__name__})") from None
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to exponential backoff


def _error_detail(e: urllib.error.HTTPError) -> str:
    try:
        text = e.read(300).decode("utf-8", "replace").strip()
    except Exception:  # the body is optional decoration of the message
        return ""
    return f": {' '.join(text.split())[:200]}" if text else ""
