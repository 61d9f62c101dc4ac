"""`medfuse serve`: submission, auth, exports, the review page in a real browser, feedback
durability under kill -9, preference-pair export, the OpenAI-compatible endpoint scored by
`medfuse eval`, and a bounded loopback load test. Tiny models built from configs; the
shipped checkpoint only for the one case the browser reviews (it writes real sentences)."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from conftest import FIXTURES
from eval_stub_server import write_medqa
from fastapi.testclient import TestClient
from test_model_diagnose import TINY
from test_record import full_case

from medfuse.cli import main
from medfuse.model import MedFuse
from medfuse.model.config import ModelConfig
from medfuse.record.store import write_case
from medfuse.serve import ServeSettings, TokenRegistry, create_app
from medfuse.serve.db import ReviewStore
from medfuse.serve.exports import structured_report

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "src" / "medfuse" / "data" / "checkpoint"
CHROMIUM = Path("/usr/bin/chromium")
SECRET_ID = "PATIENT-SMITH-7"  # a case id standing in for an identifier: it must never reach a log


# ------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def tiny(one_torch_thread) -> MedFuse:
    return MedFuse.build(ModelConfig.from_dict(TINY), tiny_llm=True)


@pytest.fixture(scope="module")
def tiny_ckpt(tiny, tmp_path_factory) -> Path:
    return tiny.save(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def tokens() -> tuple[TokenRegistry, dict[str, str]]:
    registry = TokenRegistry()
    return registry, {role: registry.add(f"{role}-1", role) for role in ("admin", "clinician", "api")}


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def case_files(tmp_path_factory) -> list[tuple[str, bytes]]:
    """One encounter as files: a PNG radiograph, a 4 s WFDB ECG and a labs CSV."""
    case = full_case(SECRET_ID)
    case.ecg = case.ecg.model_copy(update={"signal": case.ecg.signal[:2000], "n_samples": 2000})
    case.cxr = case.cxr[:1]
    folder = write_case(case, tmp_path_factory.mktemp("case") / "c")
    labs = "case_id,name,value,unit,ref_range\n" f"{SECRET_ID},Creatinine,2.4,mg/dL,0.5-1.2\n"
    return [("chest.png", (folder / "cxr_0.png").read_bytes()), ("ecg.hea", (folder / "ecg.hea").read_bytes()),
            ("ecg.dat", (folder / "ecg.dat").read_bytes()), ("labs.csv", labs.encode())]


@pytest.fixture(scope="module")
def client(tiny, tokens, tmp_path_factory):
    settings = ServeSettings(tokens=tokens[0], model=tiny, db_url=f"sqlite:///{tmp_path_factory.mktemp('db') / 's.db'}",
                             max_new_tokens=8, max_chat_tokens=64, explain=False)
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="module")
def submitted(client, tokens, case_files) -> dict:
    r = client.post("/api/cases", headers=auth(tokens[1]["api"]),
                    files=[("files", (name, data)) for name, data in case_files])
    assert r.status_code == 201, r.text
    return r.json()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def uvicorn_thread(app):
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, access_log=False, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        assert time.time() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


# ------------------------------------------------------------------ submission, auth, validation

def test_submitted_files_become_one_diagnosed_case(submitted, client, tokens):
    result = submitted["result"]
    assert result["case_id"] == SECRET_ID and submitted["review_url"] == f"/review/{submitted['ref']}"
    weights = result["modality_weights"]
    assert weights["cxr"] > 0 and weights["ecg"] > 0 and weights["labs"] > 0  # all three files were read
    assert any(e["item"] == "creatinine" for e in result["evidence"])
    # The stored result reads back for a clinician, byte for byte the same.
    got = client.get(f"/api/cases/{submitted['ref']}", headers=auth(tokens[1]["clinician"]))
    assert got.status_code == 200 and got.json()["result"] == result
    index = client.get("/", headers=auth(tokens[1]["clinician"]))
    assert f'href="/review/{submitted["ref"]}"' in index.text
    png = client.get(f"/api/cases/{submitted['ref']}/cxr/0.png", headers=auth(tokens[1]["clinician"]))
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_fhir_bundle_body_is_a_case(client, tokens):
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:p1", "resource": {"resourceType": "Patient", "id": "p1", "gender": "female"}},
        {"fullUrl": "urn:uuid:e1", "resource": {"resourceType": "Encounter", "id": "e1", "status": "finished",
                                                "class": {"code": "IMP"}, "subject": {"reference": "urn:uuid:p1"}}},
        {"fullUrl": "urn:uuid:o1", "resource": {
            "resourceType": "Observation", "id": "o1", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "2160-0"}], "text": "Creatinine"},
            "subject": {"reference": "urn:uuid:p1"}, "encounter": {"reference": "urn:uuid:e1"},
            "valueQuantity": {"value": 2.4, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"}}},
    ]}
    h = {**auth(tokens[1]["api"]), "Content-Type": "application/fhir+json"}
    r = client.post("/api/cases", headers=h, content=json.dumps(bundle))
    assert r.status_code == 201, r.text
    assert r.json()["result"]["modality_weights"]["labs"] > 0
    assert any(e["item"] == "creatinine" and e["value"] == 2.4 for e in r.json()["result"]["evidence"])
    # A bundle of two encounters is refused, not silently cut to one.
    two = client.post("/api/cases", headers=h, content=(FIXTURES / "fhir" / "bundle_encounter.json").read_bytes())
    assert two.status_code == 400 and two.json()["error"] == "the files hold 2 encounters; submit one encounter at a time"
    bad = client.post("/api/cases", headers=h, content=b'{"resourceType": "Bundle", "entry": 5}')
    assert bad.status_code == 400 and bad.json()["error"].startswith("bundle.json:")


def test_roles_and_tokens(client, tokens, submitted):
    t = tokens[1]
    ref = submitted["ref"]
    assert client.get(f"/api/cases/{ref}").status_code == 401
    r = client.get(f"/api/cases/{ref}", headers=auth("not-a-token"))
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    fb = {"target": "diagnosis", "index": 0, "decision": "accept"}
    assert client.post(f"/api/cases/{ref}/feedback", json=fb, headers=auth(t["api"])).status_code == 403
    assert client.post("/api/cases", headers=auth(t["clinician"]), files=[("files", ("a.png", b"x"))]).status_code == 403
    assert client.post("/v1/chat/completions", headers=auth(t["clinician"]), json={"messages": []}).status_code == 403
    assert client.post(f"/api/cases/{ref}/feedback", json=fb, headers=auth(t["clinician"])).status_code == 201
    assert client.post(f"/api/cases/{ref}/feedback", json=fb, headers=auth(t["admin"])).status_code == 201
    # The token file keeps hashes only, and reads back to the same principals.
    entries = tokens[0].entries()
    assert all(t["admin"] not in json.dumps(e) and len(e["sha256"]) == 64 for e in entries)


@pytest.mark.parametrize(("files", "problem"), [
    ([("notes.docx", b"PK\x03\x04junk")], "notes.docx: not a FHIR bundle, DICOM, WFDB, image or labs CSV file"),
    ([("scan.dcm", b"\0" * 128 + b"DICM" + b"\x02\x00garbage")], "scan.dcm:"),
    ([("ecg.dat", b"\0\0\0\0")], "ecg.dat: a WFDB data file without its header (.hea)"),
    ([("x.png", b"")], "x.png: empty file"),
])
def test_bad_uploads_are_one_clear_error(client, tokens, files, problem):
    r = client.post("/api/cases", headers=auth(tokens[1]["api"]), files=[("files", f) for f in files])
    assert r.status_code == 400
    message = r.json()["error"]
    assert message.startswith(problem) and "\n" not in message
    assert "Traceback" not in r.text and "/tmp" not in r.text and "medfuse-serve-" not in r.text


def test_bad_feedback_is_refused(client, tokens, submitted):
    ref, h = submitted["ref"], auth(tokens[1]["clinician"])
    url = f"/api/cases/{ref}/feedback"
    assert client.post(url, json={"target": "diagnosis", "index": 99, "decision": "accept"}, headers=h).status_code == 400
    assert client.post(url, json={"target": "diagnosis", "index": 0, "decision": "edit"}, headers=h).status_code == 400
    assert client.post(url, json={"target": "x", "index": 0, "decision": "accept"}, headers=h).status_code == 400
    assert client.post(url, content=b"{", headers={**h, "Content-Type": "application/json"}).status_code == 400
    assert client.get("/api/cases/" + "0" * 32, headers=h).status_code == 404
    assert client.get("/api/cases/../etc", headers=h).status_code == 404


def test_access_log_carries_no_case_identifiers(client, tokens, case_files, caplog):
    with caplog.at_level(logging.DEBUG):
        r = client.post("/api/cases", headers=auth(tokens[1]["api"]),
                        files=[("files", (name, data)) for name, data in case_files])
        ref = r.json()["ref"]
        client.get(f"/review/{ref}", headers=auth(tokens[1]["clinician"]))
        client.get(f"/api/cases/{ref}/fhir", headers=auth(tokens[1]["clinician"]))
    access = [rec.getMessage() for rec in caplog.records if rec.name == "medfuse.serve.access"]
    assert "POST /api/cases 201" in access[0] and any("GET /review/{ref} 200" in line for line in access)
    # Everything the server side logged (the test client's own request log is not the server's).
    everything = "\n".join(rec.getMessage() for rec in caplog.records if not rec.name.startswith("httpx"))
    assert SECRET_ID not in everything and ref not in everything and "chest.png" not in everything


def test_submitted_case_is_explained_when_asked(tiny, case_files):
    from medfuse.serve.engine import ModelEngine
    from medfuse.serve.intake import Upload, read_submission

    case = read_submission([Upload(n, d) for n, d in case_files], 10**8).case
    analysis = ModelEngine(model=tiny, max_new_tokens=4).analyse(case, explain=True)
    # medfuse.explain's Explanation, stored as JSON; its HTML fragment when that renderer exists.
    assert analysis.explanation is not None, analysis.explanation_note
    assert analysis.explanation["case_id"] == SECRET_ID and analysis.explanation["ablation"]
    assert (analysis.explanation_html is None) == (analysis.explanation_note is not None)


def test_reasoning_citations_link_to_the_cited_evidence_items():
    from medfuse.serve.review_page import _citations

    evidence = [{"item": "age", "cite": 1}, {"item": "heart_rate", "cite": None},
                {"item": "BNP", "cite": 2}, {"item": "creatinine", "cite": 3}]
    # [Ek] are the prompt's numbers, not positions in the stored list.
    assert _citations("Heart failure: BNP 900 pg/mL [E2, E3].", evidence) == [2, 3]
    assert _citations("Tachycardia: heart rate 112/min.", evidence) == [1]  # no [Ek]: by the item's name
    assert _citations("Nothing cited [E9].", evidence) == []


# ------------------------------------------------------------------ exports

def test_fhir_and_dicom_sr_exports_parse_back(client, tokens, submitted):
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    ref, h = submitted["ref"], auth(tokens[1]["clinician"])
    r = client.get(f"/api/cases/{ref}/fhir", headers=h)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/fhir+json")
    report = DiagnosticReport.model_validate(r.json())
    dx = submitted["result"]["diagnoses"]
    assert report.status == "preliminary" and report.conclusion == submitted["result"]["report"]
    assert len(report.contained) == len(dx) + len(submitted["result"]["findings"])
    assert report.contained[0].code.text == dx[0]["name"]
    assert float(report.contained[0].valueQuantity.value) == pytest.approx(dx[0]["probability"])
    assert SECRET_ID not in r.text  # the report is identified by the opaque ref only
    sr = client.get(f"/api/cases/{ref}/sr.dcm", headers=h)
    ds = pydicom.dcmread(io.BytesIO(sr.content))
    assert ds.Modality == "SR" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    assert "CurrentRequestedProcedureEvidenceSequence" not in ds  # a PNG source: nothing to reference


def test_dicom_sr_boxes_reference_the_source_dicom_image():
    import highdicom as hd

    header = pydicom.dcmread(FIXTURES / "dicom" / "RG1_UNCI.dcm", stop_before_pixels=True)
    buf = io.BytesIO()
    header.save_as(buf)
    result = {"diagnoses": [{"name": "pneumonia", "icd10": "J18", "probability": 0.81, "present": True}],
              "findings": [{"label": "consolidation", "box": [100, 200, 400, 600]}],
              "report": "Impression: pneumonia.", "model": {"name": "medfuse", "version": "test"}}
    data = structured_report("ab" * 16, result, {0: buf.getvalue()}, dt.datetime(2026, 1, 2, tzinfo=dt.UTC))
    sr = hd.sr.srread(io.BytesIO(data))
    assert sr.StudyInstanceUID == header.StudyInstanceUID and sr.PatientID == header.PatientID
    (roi,) = sr.content.get_planar_roi_measurement_groups()
    region = roi.roi
    assert region.GraphicType == "POLYLINE"
    ref_sop = region.ContentSequence[0].ReferencedSOPSequence[0]
    assert ref_sop.ReferencedSOPInstanceUID == header.SOPInstanceUID
    points = np.asarray(region.value, dtype=float).reshape(-1, 2)
    assert points[:, 0].min() == pytest.approx(100 / 999 * header.Columns, abs=1)
    assert points[:, 1].max() == pytest.approx(600 / 999 * header.Rows, abs=1)
    groups = sr.content.get_observation_groups() if hasattr(sr.content, "get_observation_groups") else None
    assert groups is None or groups


# ------------------------------------------------------------------ OpenAI-compatible endpoint, eval

def test_chat_completions_and_models(client, tokens):
    h = auth(tokens[1]["api"])
    models = client.get("/v1/models", headers=h).json()
    assert models["data"][0]["id"] == "medfuse"
    r = client.post("/v1/chat/completions", headers=h, json={
        "model": "medfuse", "max_tokens": 5,
        "messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Chest pain?"}]})
    body = r.json()
    assert r.status_code == 200 and body["object"] == "chat.completion"
    assert 1 <= body["usage"]["completion_tokens"] <= 5 and isinstance(body["choices"][0]["message"]["content"], str)
    bad = client.post("/v1/chat/completions", headers=h, json={"messages": [{"role": "user", "content": "x"}],
                                                               "max_tokens": 10_000})
    assert bad.status_code == 400 and "max_tokens" in bad.json()["error"]["message"]


def test_medfuse_eval_scores_the_served_model(tiny, tokens, tmp_path, monkeypatch, capsys):
    data = tmp_path / "medqa.jsonl"
    write_medqa(data, 4)
    settings = ServeSettings(tokens=tokens[0], model=tiny, db_url=f"sqlite:///{tmp_path / 'e.db'}", explain=False)
    monkeypatch.setenv("OPENAI_API_KEY", tokens[1]["api"])
    with uvicorn_thread(create_app(settings)) as url:
        rc = main(["eval", "run", "--model", f"openai:{url}/v1", "--benchmark", "medqa", "--data", str(data),
                   "--out", str(tmp_path / "run"), "--quiet", "--json", "--max-new-tokens", "4", "--bootstrap", "50"])
    assert rc == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["n_items"] == 4 and summary["n_errors"] == 0
    assert summary["model_id"] == f"openai:{url}/v1#medfuse" and summary["score_valid"]


# ------------------------------------------------------------------ feedback export

def test_feedback_export_writes_trl_preference_pairs(tmp_path, capsys):
    store = ReviewStore(f"sqlite:///{tmp_path / 'f.db'}")
    result = {"case_id": "c", "diagnoses": [{"name": "pneumonia", "icd10": "J18", "probability": 0.8, "present": True},
                                            {"name": "sepsis", "icd10": "A41", "probability": 0.2, "present": False}],
              "findings": [], "report": "", "model": {"name": "m", "version": "v"}}
    sentences = ["Fever 38.6 Cel.", "Creatinine is low.", "Consolidation on the radiograph.", "WBC is high."]
    ref = store.add_case(result=result, sentences=sentences, evidence=[], prompt_text="PROMPT", raw_output="",
                         files={}, submitted_by="t")
    store.add_case(result=result, sentences=sentences, evidence=[], prompt_text="P2", raw_output="", files={},
                   submitted_by="t")  # unreviewed: no pairs
    store.add_feedback(ref, "sentence", 0, "accept", sentences[0], None, "dr")
    store.add_feedback(ref, "sentence", 1, "reject", sentences[1], None, "dr")
    store.add_feedback(ref, "sentence", 2, "accept", sentences[2], None, "dr")
    store.add_feedback(ref, "sentence", 3, "accept", sentences[3], None, "dr")
    store.add_feedback(ref, "sentence", 3, "edit", sentences[3], "WBC is 15.2, high.", "dr")  # the later one counts
    store.add_feedback(ref, "diagnosis", 1, "reject", "sepsis", None, "dr")  # model said absent: it is present
    store.close()
    out = tmp_path / "pairs.jsonl"
    assert main(["feedback", "export", "--db", f"sqlite:///{tmp_path / 'f.db'}", "--out", str(out)]) == 0
    pairs = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(set(p) == {"prompt", "chosen", "rejected", "kind"} for p in pairs)
    by_kind = {}
    for p in pairs:
        by_kind.setdefault(p["kind"], []).append(p)
    assert by_kind["sentence"] == [
        {"prompt": "PROMPT<think>Fever 38.6 Cel. ", "chosen": "Consolidation on the radiograph.",
         "rejected": "Creatinine is low.", "kind": "sentence"},
        {"prompt": "PROMPT<think>Fever 38.6 Cel. Consolidation on the radiograph. ", "chosen": "WBC is 15.2, high.",
         "rejected": "WBC is high.", "kind": "sentence"},
    ]
    (resp,) = by_kind["response"]
    assert resp["chosen"] == ("<think>Fever 38.6 Cel. Consolidation on the radiograph. WBC is 15.2, high.</think>"
                              "<answer>pneumonia; sepsis</answer>")
    assert resp["rejected"] == f"<think>{' '.join(sentences)}</think><answer>pneumonia</answer>"
    assert "3 pair(s)" in capsys.readouterr().err
    assert not list(tmp_path.glob(".pairs.jsonl*"))  # no temporary file left behind


def test_feedback_export_missing_db_is_one_line(tmp_path, capsys):
    assert main(["feedback", "export", "--db", f"sqlite:///{tmp_path / 'none.db'}", "--out", str(tmp_path / "p.jsonl")]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("medfuse: error:") and "no such database file" in err and "\n" not in err
    assert not (tmp_path / "p.jsonl").exists()


def test_the_schema_is_portable_to_postgresql():
    from sqlalchemy.dialects import postgresql
    from sqlalchemy.schema import CreateTable

    from medfuse.serve.db import Base

    ddl = "\n".join(str(CreateTable(t).compile(dialect=postgresql.dialect())) for t in Base.metadata.sorted_tables)
    assert "BYTEA" in ddl and "TIMESTAMP WITH TIME ZONE" in ddl and "REFERENCES cases (id)" in ddl


# ------------------------------------------------------------------ durability under kill -9

def test_acknowledged_feedback_survives_kill_9(tiny, tiny_ckpt, tokens, case_files, tmp_path):
    from medfuse.serve.app import store_analysis
    from medfuse.serve.engine import ModelEngine
    from medfuse.serve.intake import Upload, read_submission

    db = f"sqlite:///{tmp_path / 'k.db'}"
    store = ReviewStore(db)
    sub = read_submission([Upload(n, d) for n, d in case_files], 10**8)
    ref = store_analysis(store, sub.case, ModelEngine(model=tiny, max_new_tokens=4).analyse(sub.case, explain=False),
                         sub.dicom_headers, "test")
    store.close()
    token_file = tmp_path / "tokens.json"
    tokens[0].write(token_file)
    port = free_port()
    cmd = [sys.executable, "-m", "medfuse", "serve", "--model", str(tiny_ckpt), "--db", db, "--port", str(port),
           "--tokens", str(token_file), "--lazy"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def start() -> subprocess.Popen:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while True:
            assert proc.poll() is None and time.time() < deadline, "server did not start"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    return proc
            time.sleep(0.1)

    proc = start()
    acked: list[int] = []
    stop = threading.Event()

    def writer(n: int) -> None:
        with httpx.Client(headers=auth(tokens[1]["clinician"]), timeout=5) as http:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    r = http.post(f"http://127.0.0.1:{port}/api/cases/{ref}/feedback",
                                  json={"target": "diagnosis", "index": i % 3, "decision": "edit",
                                        "text": f"writer {n} edit {i} " + "x" * 500})
                except httpx.HTTPError:
                    return  # the server died mid-request: that write was never acknowledged
                if r.status_code == 201:
                    acked.append(r.json()["id"])

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    while len(acked) < 60:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)  # in the middle of a stream of writes
    proc.wait(10)
    stop.set()
    for t in threads:
        t.join(10)
    proc = start()  # the restarted server opens (and recovers) the same database
    try:
        r = httpx.get(f"http://127.0.0.1:{port}/api/cases/{ref}", headers=auth(tokens[1]["clinician"]), timeout=5)
        assert r.status_code == 200 and len(r.json()["decisions"]) == 3
    finally:
        proc.terminate()
        proc.wait(10)
    store = ReviewStore(db)
    assert store.integrity_ok()
    assert set(acked) <= store.feedback_ids() and len(acked) >= 60
    store.close()


# ------------------------------------------------------------------ load test

def test_bounded_loopback_load(tiny, tokens, submitted, client, tmp_path):
    from medfuse.serve import run_load_test

    # The module's app and database, behind a real uvicorn on 127.0.0.1.
    with uvicorn_thread(client.app) as url:
        stats = run_load_test(url, tokens[1]["admin"], submitted["ref"], n_requests=300, clients=4)
    print(f"\nserve load test: {stats}")
    assert stats["requests"] == 300 and stats["errors"] == 0
    assert stats["requests_per_s"] > 0 and stats["p95_ms"] >= stats["p50_ms"]


# ------------------------------------------------------------------ the review page in a real browser

@pytest.fixture(scope="module")
def shipped_server(tokens, case_files, tmp_path_factory):
    """The shipped checkpoint (it writes real reasoning sentences) behind uvicorn, with one case."""
    settings = ServeSettings(tokens=tokens[0], checkpoint=SHIPPED, max_new_tokens=64, explain=False,
                             db_url=f"sqlite:///{tmp_path_factory.mktemp('db') / 'b.db'}")
    with uvicorn_thread(create_app(settings)) as url:
        r = httpx.post(f"{url}/api/cases", headers=auth(tokens[1]["api"]), timeout=120,
                       files=[("files", (name, data)) for name, data in case_files])
        assert r.status_code == 201, r.text
        yield url, r.json()


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")
def test_review_page_in_a_real_browser(shipped_server, tokens):
    from playwright.sync_api import expect, sync_playwright

    url, sub = shipped_server
    ref = sub["ref"]
    assert len(sub["sentences"]) >= 1 and len(sub["result"]["diagnoses"]) >= 2
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page()
            outside: list[str] = []
            page.on("request", lambda req: None if req.url.startswith(url) else outside.append(req.url))
            # Without a token the page sends the browser to the login form.
            page.goto(f"{url}/review/{ref}")
            assert "/login" in page.url
            page.fill("input[name=token]", tokens[1]["clinician"])
            page.click("form button")
            page.wait_for_url(f"{url}/review/{ref}")
            # The radiograph with its boxes, the 12-lead grid, the labs, the evidence anchors.
            assert page.locator(".cxr img").evaluate("img => img.complete && img.naturalWidth > 0")
            assert page.locator(".cxr svg g.box.model rect").count() == len(sub["result"]["findings"]) >= 1
            assert page.locator("#ecg-grid g.lead").count() == 13  # 12 leads + the lead II rhythm strip
            assert page.locator("#labs tr.abn td.flag").first.inner_text() == "H"
            cite = page.locator("a.cite").first
            target = cite.get_attribute("href")
            cite.click()
            assert page.locator(f"li{target}").get_attribute("class").find("hl") >= 0
            # Accept one diagnosis, reject another, edit one sentence.
            dx = page.locator("tr.diagnosis")
            dx.nth(0).locator("button[data-action=accept]").click()
            dx.nth(1).locator("button[data-action=reject]").click()
            sentence = page.locator("li.sentence").nth(0)
            sentence.locator("button[data-action=edit]").click()
            sentence.locator("textarea").fill("Edited by the clinician.")
            sentence.locator("button[data-action=save]").click()
            # The page's CSP forbids eval, so wait on elements, not on a script.
            expect(dx.nth(0).locator(".status")).to_have_text("accept")
            expect(dx.nth(1).locator(".status")).to_have_text("reject")
            expect(sentence.locator(".status")).to_have_text("edit")
            page.reload()
            dx = page.locator("tr.diagnosis")
            assert dx.nth(0).get_attribute("data-decision") == "accept"
            assert dx.nth(1).get_attribute("data-decision") == "reject"
            sentence = page.locator("li.sentence").nth(0)
            assert sentence.get_attribute("data-decision") == "edit"
            assert sentence.locator(".text").inner_text() == "Edited by the clinician."
            assert outside == []  # nothing left the loopback server
        finally:
            browser.close()
