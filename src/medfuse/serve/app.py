"""The FastAPI application of `medfuse serve` (`create_app(settings)`).

Routes (every one needs a bearer token, or the `medfuse_token` cookie the login form
sets for browsers; see `medfuse.serve.auth` for the roles):

- `POST /api/cases` (submit): a FHIR R4 bundle as the JSON body, or the files of one
  encounter as multipart field `files`; answers `{ref, result, explanation, review_url}`.
- `GET /api/cases/{ref}` (read): the stored result, explanation and decisions.
- `GET /api/cases/{ref}/fhir`, `GET /api/cases/{ref}/sr.dcm` (read): the result as a FHIR R4
  DiagnosticReport and as a DICOM Comprehensive SR.
- `GET /api/cases/{ref}/cxr/{i}.png` (read): a radiograph of the case.
- `POST /api/cases/{ref}/feedback` (review): `{target, index, decision, text?}`; answered
  only after the decision is committed.
- `GET /review/{ref}` (read): the review page; `GET /` (read): the newest cases, linked
  to their pages; `GET|POST /login`: the token form (sets an HttpOnly, SameSite=Strict
  cookie).
- `GET /v1/models`, `POST /v1/chat/completions` (complete): OpenAI-compatible, so that
  `medfuse eval --model openai:http://HOST:PORT/v1` scores the served model.
- `GET /healthz`: no token needed.

Errors are JSON `{"error": "..."}` (OpenAI's `{"error": {"message", "type"}}` under /v1),
one line, no traceback. The access log (logger `medfuse.serve.access`) records method,
route template (`/api/cases/{ref}`, never the concrete path), status and duration: no
case ref, case id or name reaches it.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from medfuse.errors import MedfuseError
from medfuse.record.case import PatientCase
from medfuse.serve.auth import Principal, TokenRegistry
from medfuse.serve.db import DECISIONS, TARGETS, ReviewStore, StoredCase
from medfuse.serve.engine import CaseAnalysis, ChatRequestError, ModelEngine
from medfuse.serve.intake import SubmissionError, Upload, read_submission

access_log = logging.getLogger("medfuse.serve.access")
log = logging.getLogger("medfuse.serve")

TOKEN_COOKIE = "medfuse_token"
DICOM_HEADER_PREFIX = "dicom/"
_FHIR_TYPES = ("application/json", "application/fhir+json")


@dataclass
class ServeSettings:
    """What `create_app` needs; the `medfuse serve` flags fill it."""

    tokens: TokenRegistry
    checkpoint: Path | None = None  # the model folder (loaded on first use unless `preload`)
    model: Any = None  # or an already loaded MedFuse (tests, notebooks)
    db_url: str = "sqlite:///medfuse-serve.db"
    max_new_tokens: int = 128  # generated tokens per diagnosed case
    max_chat_tokens: int = 512  # upper bound of max_tokens on /v1/chat/completions
    max_upload_bytes: int = 64 * 1024 * 1024
    explain: bool = True  # compute explanations when cases are submitted
    preload: bool = False  # load the model at start-up instead of on first use
    lang: str = "en"  # language of names, reasoning and report: en or zh


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class _CaseCache:
    """Recently viewed cases, parsed once (the page, images and exports all need them)."""

    def __init__(self, size: int = 32):
        self._items: OrderedDict[str, PatientCase] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, stored: StoredCase) -> PatientCase:
        with self._lock:
            if stored.ref in self._items:
                self._items.move_to_end(stored.ref)
                return self._items[stored.ref]
        case = case_from_files(stored.files)
        with self._lock:
            self._items[stored.ref] = case
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return case


def case_files(case: PatientCase, dicom_headers: dict[int, bytes]) -> dict[str, bytes]:
    """The case folder's files (as `write_case` writes them) plus source DICOM headers."""
    from medfuse.record.store import write_case

    tmp = Path(tempfile.mkdtemp(prefix="medfuse-serve-case-"))
    try:
        folder = write_case(case, tmp / "case")
        files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    files.update({f"{DICOM_HEADER_PREFIX}{i}": data for i, data in dicom_headers.items()})
    return files


def case_from_files(files: dict[str, bytes]) -> PatientCase:
    from medfuse.record.store import read_case

    tmp = Path(tempfile.mkdtemp(prefix="medfuse-serve-case-"))
    try:
        for name, data in files.items():
            if not name.startswith(DICOM_HEADER_PREFIX):
                (tmp / name).write_bytes(data)
        return read_case(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def store_analysis(store: ReviewStore, case: PatientCase, analysis: CaseAnalysis, dicom_headers: dict[int, bytes],
                   submitted_by: str) -> str:
    """Store a diagnosed case; returns its ref."""
    d = analysis.diagnosed
    return store.add_case(result=d.result.model_dump(mode="json"), sentences=analysis.sentences,
                          evidence=analysis.evidence, prompt_text=analysis.prompt_text,
                          raw_output=d.raw_text, files=case_files(case, dicom_headers), submitted_by=submitted_by,
                          explanation=analysis.explanation, explanation_html=analysis.explanation_html)


def create_app(settings: ServeSettings) -> FastAPI:
    """The review service (see the module docstring)."""
    from medfuse.serve.review_page import REVIEW_CSS, REVIEW_JS, render_review_page

    store = ReviewStore(settings.db_url)
    engine = ModelEngine(settings.checkpoint, settings.model, max_new_tokens=settings.max_new_tokens,
                         max_chat_tokens=settings.max_chat_tokens, explain=settings.explain)
    if settings.preload:
        _ = engine.model
    cases = _CaseCache()
    app = FastAPI(title="medfuse review service", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = store
    app.state.engine = engine

    # ------------------------------------------------------------------ plumbing

    @app.middleware("http")
    async def access_and_headers(request: Request, call_next):
        start = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception as e:  # noqa: BLE001 - never a traceback to the client
            log.error("unhandled %s on %s", e.__class__.__name__, _route_of(request))
            response = JSONResponse({"error": "internal error"}, status_code=500)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Content-Security-Policy"] = ("default-src 'self'; img-src 'self' data:; "
                                                       "style-src 'self' 'unsafe-inline'; "
                                                       "script-src 'self' 'unsafe-inline'; connect-src 'self'")
        response.headers["Cache-Control"] = "no-store"
        access_log.info("%s %s %d %.1fms", request.method, _route_of(request), response.status_code,
                        (time.perf_counter() - start) * 1000)
        return response

    def _error(request: Request, status: int, message: str) -> JSONResponse:
        if request.url.path.startswith("/v1/"):
            kind = "invalid_request_error" if status < 500 else "server_error"
            if status in (401, 403):
                kind = "authentication_error" if status == 401 else "permission_error"
            body: dict[str, Any] = {"error": {"message": message, "type": kind}}
        else:
            body = {"error": message}
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(HttpError)
    async def _http_error(request: Request, exc: HttpError):
        return _error(request, exc.status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _starlette_error(request: Request, exc: StarletteHTTPException):
        return _error(request, exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return _error(request, 422, f"{where}: {first.get('msg', 'invalid request')}".strip(": "))

    def principal(request: Request, permission: str) -> Principal:
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else request.cookies.get(TOKEN_COOKIE)
        who = settings.tokens.lookup(token)
        if who is None:
            raise HttpError(401, "missing or invalid token")
        if not who.may(permission):
            raise HttpError(403, f"role '{who.role}' may not {permission}")
        return who

    def stored_case(ref: str, with_files: bool = True) -> StoredCase:
        try:
            uuid.UUID(hex=ref)
        except ValueError:
            raise HttpError(404, "no such case") from None
        found = store.get_case(ref, with_files=with_files)
        if found is None:
            raise HttpError(404, "no such case")
        return found

    async def json_body(request: Request) -> Any:
        raw = await request.body()
        if len(raw) > settings.max_upload_bytes:
            raise HttpError(413, f"body exceeds {settings.max_upload_bytes} bytes")
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            raise HttpError(400, "body is not JSON") from None

    # ------------------------------------------------------------------ routes

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/api/cases")
    async def submit(request: Request):
        who = principal(request, "submit")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype in _FHIR_TYPES:
            raw = await request.body()
            if len(raw) > settings.max_upload_bytes:
                raise HttpError(413, f"body exceeds {settings.max_upload_bytes} bytes")
            uploads = [Upload("bundle.json", raw)]
        elif ctype == "multipart/form-data":
            form = await request.form(max_files=64, max_fields=16)
            uploads = []
            for item in form.getlist("files"):
                if isinstance(item, str):
                    raise HttpError(400, "field 'files' must hold files")
                uploads.append(Upload(item.filename or "upload", await item.read()))
        else:
            raise HttpError(415, "send a FHIR bundle (application/json) or files (multipart/form-data, field 'files')")
        explain = request.query_params.get("explain", "true").lower() not in ("0", "false", "no")
        from starlette.concurrency import run_in_threadpool

        def work() -> tuple[str, CaseAnalysis]:
            sub = read_submission(uploads, settings.max_upload_bytes)
            analysis = engine.analyse(sub.case, lang=settings.lang, explain=explain and settings.explain)
            return store_analysis(store, sub.case, analysis, sub.dicom_headers, who.name), analysis

        try:
            ref, analysis = await run_in_threadpool(work)
        except SubmissionError as e:
            raise HttpError(400, str(e)) from None
        except MedfuseError as e:
            raise HttpError(400, str(e)) from None
        return JSONResponse({"ref": ref, "result": analysis.diagnosed.result.model_dump(mode="json"),
                             "sentences": analysis.sentences, "explanation": analysis.explanation,
                             "explanation_note": analysis.explanation_note, "review_url": f"/review/{ref}"},
                            status_code=201)

    @app.get("/api/cases/{ref}")
    def get_case(ref: str, request: Request):
        principal(request, "read")
        c = stored_case(ref, with_files=False)
        return {"ref": c.ref, "result": c.result, "sentences": c.sentences, "explanation": c.explanation,
                "decisions": [{"id": d.id, "target": d.target, "index": d.index, "decision": d.decision,
                               "edited": d.edited, "reviewer": d.reviewer} for d in store.decisions(ref)]}

    @app.get("/api/cases/{ref}/fhir")
    def get_fhir(ref: str, request: Request):
        from medfuse.serve.exports import diagnostic_report

        principal(request, "read")
        c = stored_case(ref, with_files=False)
        return JSONResponse(diagnostic_report(c.ref, c.result, c.created_at), media_type="application/fhir+json")

    @app.get("/api/cases/{ref}/sr.dcm")
    def get_sr(ref: str, request: Request):
        from medfuse.serve.exports import structured_report

        principal(request, "read")
        c = stored_case(ref)
        headers = {int(name[len(DICOM_HEADER_PREFIX):]): data for name, data in c.files.items()
                   if name.startswith(DICOM_HEADER_PREFIX)}
        data = structured_report(c.ref, c.result, headers, c.created_at)
        return Response(data, media_type="application/dicom",
                        headers={"Content-Disposition": 'attachment; filename="medfuse-sr.dcm"'})

    @app.get("/api/cases/{ref}/cxr/{index}.png")
    def get_cxr(ref: str, index: int, request: Request):
        principal(request, "read")
        c = stored_case(ref)
        case = cases.get(c)
        if not 0 <= index < len(case.cxr) or not case.cxr[index].file:
            raise HttpError(404, "no such image")
        return Response(c.files[case.cxr[index].file], media_type="image/png")

    @app.post("/api/cases/{ref}/feedback")
    async def post_feedback(ref: str, request: Request):
        who = principal(request, "review")
        body = await json_body(request)
        if not isinstance(body, dict):
            raise HttpError(400, "body must be a JSON object {target, index, decision, text?}")
        target, index, decision, text = body.get("target"), body.get("index"), body.get("decision"), body.get("text")
        if target not in TARGETS:
            raise HttpError(400, f"target must be one of {', '.join(TARGETS)}")
        if decision not in DECISIONS:
            raise HttpError(400, f"decision must be one of {', '.join(DECISIONS)}")
        if not isinstance(index, int) or isinstance(index, bool):
            raise HttpError(400, "index must be an integer")
        if decision == "edit":
            if not isinstance(text, str) or not text.strip():
                raise HttpError(400, "an edit needs the corrected text")
            if len(text) > 2000:
                raise HttpError(400, "text is longer than 2000 characters")
        c = stored_case(ref, with_files=False)
        items = c.sentences if target == "sentence" else [d["name"] for d in c.result["diagnoses"]]
        if not 0 <= index < len(items):
            raise HttpError(400, f"index {index} is out of range (0-{len(items) - 1})" if items else f"no {target} to review")
        from starlette.concurrency import run_in_threadpool

        fid = await run_in_threadpool(store.add_feedback, ref, target, index, decision, items[index],
                                      text.strip() if decision == "edit" else None, who.name)
        return JSONResponse({"id": fid, "target": target, "index": index, "decision": decision}, status_code=201)

    @app.get("/review/{ref}", response_class=HTMLResponse)
    def review(ref: str, request: Request):
        try:
            principal(request, "read")
        except HttpError as e:
            if e.status == 401:
                return RedirectResponse(f"/login?next=/review/{ref}", status_code=303)
            raise
        c = stored_case(ref)
        page = render_review_page(c, cases.get(c), store.decisions(ref), REVIEW_JS, REVIEW_CSS)
        return HTMLResponse(page)

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request):
        try:
            principal(request, "read")
        except HttpError as e:
            if e.status == 401:
                return RedirectResponse("/login?next=/", status_code=303)
            raise
        rows = "".join(f'<li><a href="/review/{ref}">{_attr(case_id)}</a> <small>{created:%Y-%m-%d %H:%M}</small></li>'
                       for ref, created, case_id in store.recent_cases())
        return HTMLResponse("<!doctype html><html lang=en><head><meta charset=utf-8><title>medfuse review</title>"
                            f"</head><body><h1>Cases to review</h1><ol>{rows or '<li>none yet</li>'}</ol></body></html>")

    @app.get("/login", response_class=HTMLResponse)
    def login_form(next: str = "/"):
        target = next if next.startswith("/") and not next.startswith("//") else "/"
        return HTMLResponse(
            "<!doctype html><html lang=en><head><meta charset=utf-8><title>medfuse login</title></head><body>"
            "<form method=post action=/login><label>Token <input type=password name=token autocomplete=off></label>"
            f"<input type=hidden name=next value=\"{_attr(target)}\"><button>Sign in</button></form></body></html>")

    @app.post("/login")
    async def login(request: Request):
        form = await request.form(max_files=0, max_fields=4)
        token, target = str(form.get("token", "")), str(form.get("next", "/"))
        if settings.tokens.lookup(token) is None:
            raise HttpError(401, "invalid token")
        target = target if target.startswith("/") and not target.startswith("//") else "/"
        response = RedirectResponse(target, status_code=303)
        # HttpOnly: scripts never read it; SameSite=Strict: other sites cannot send it.
        response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        return response

    @app.get("/v1/models")
    def models(request: Request):
        principal(request, "complete")
        return {"object": "list", "data": [{"id": engine.model_name, "object": "model", "owned_by": "medfuse"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        principal(request, "complete")
        body = await json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            raise HttpError(400, "body must be an object with a 'messages' list")
        if body.get("stream"):
            raise HttpError(400, "streaming is not supported; send stream: false")
        if body.get("n", 1) != 1:
            raise HttpError(400, "n must be 1")
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
        if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool)):
            raise HttpError(400, "max_tokens must be an integer")
        from starlette.concurrency import run_in_threadpool

        try:
            text, n_prompt, n_completion = await run_in_threadpool(engine.complete, body["messages"], max_tokens)
        except ChatRequestError as e:
            raise HttpError(400, str(e)) from None
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": engine.model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "length" if n_completion >= (max_tokens or settings.max_chat_tokens)
                             else "stop"}],
                "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_completion,
                          "total_tokens": n_prompt + n_completion}}

    return app


def _attr(value: str) -> str:
    import html

    return html.escape(value, quote=True)


def _route_of(request: Request) -> str:
    """The matched route's template (no path parameters), for the access log."""
    route = request.scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "(unmatched)"
