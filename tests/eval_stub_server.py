"""A local OpenAI-compatible chat-completions stub for the eval tests and benchmarks."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_REQUESTS = 200  # the stub refuses more than this, so a runaway loop fails fast


class StubServer:
    """An OpenAI-compatible chat-completions server on 127.0.0.1 and a free port.

    `answer(user_text) -> str` makes the reply; `fail_once` holds substrings of prompts
    whose first request gets HTTP 500; `fail_always` substrings always get HTTP 500.
    Counts requests and the largest number handled at the same time.
    """

    def __init__(self, answer, delay_s: float = 0.0, fail_once=(), fail_always=()):
        self.answer, self.delay_s = answer, delay_s
        self.fail_once, self.fail_always = set(fail_once), set(fail_always)
        self.requests, self.in_flight, self.max_in_flight = 0, 0, 0
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _reply(self, code: int, payload: dict) -> None:
                body = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path.endswith("/stats"):  # for benchmarks running the stub in another process
                    self._reply(200, {"requests": stub.requests, "max_in_flight": stub.max_in_flight})
                else:
                    self._reply(200, {"data": [{"id": "stub-model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                user = body["messages"][-1]["content"]
                text = user if isinstance(user, str) else user[0]["text"]
                with stub.lock:
                    stub.requests += 1
                    stub.in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                    over = stub.requests > MAX_REQUESTS
                    fail = next((k for k in stub.fail_once if k in text), None)
                    if fail:
                        stub.fail_once.discard(fail)
                    fail = fail or any(k in text for k in stub.fail_always)
                try:
                    time.sleep(stub.delay_s)
                    if over:
                        code, payload = 410, {"error": "too many requests in this test"}
                    elif fail:
                        code, payload = 500, {"error": "injected failure"}
                    else:
                        code, payload = 200, {"choices": [{"message": {"role": "assistant", "content": stub.answer(text)}}]}
                finally:
                    # Leave the in-flight count before replying: once the client has the
                    # reply it may start its next request, which must not count double.
                    with stub.lock:
                        stub.in_flight -= 1
                self._reply(code, payload)

        ThreadingHTTPServer.request_queue_size = 128  # socketserver's default listen backlog is 5
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def write_medqa(path, n: int) -> None:
    """n MedQA-format questions; question k's gold is 'ABCD'[k % 4]."""
    with open(path, "w") as f:
        for k in range(n):
            options = {L: f"option {L} of question {k}" for L in "ABCD"}
            f.write(json.dumps({"question": f"Question number {k}?", "answer": options["ABCD"[k % 4]],
                                "options": options, "meta_info": "step1", "answer_idx": "ABCD"[k % 4]}) + "\n")
