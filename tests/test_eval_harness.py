"""End-to-end evaluation runs against a local OpenAI-compatible stub server and a tiny
Hugging Face causal LM built from a config (no network, no downloaded weights)."""

from __future__ import annotations

import json
import re

import pytest
import torch
from eval_stub_server import StubServer, write_medqa

from medfuse.cli import main
from medfuse.errors import InputError, MedfuseError
from medfuse.eval.harness import EvalConfig, rescore, run_eval
from medfuse.eval.models.openai_compat import OpenAICompatibleModel
from medfuse.eval.report import write_report


def answer_a_or_refuse(text: str) -> str:
    """Always 'A', except a refusal for question numbers divisible by 5 (an abstention)."""
    k = int(re.search(r"Question number (\d+)", text).group(1))
    return "I cannot answer that." if k % 5 == 0 else "The answer is <answer>A</answer>."


def test_openai_endpoint_run_concurrency_retry_cache_and_resume(tmp_path):
    data = tmp_path / "test.jsonl"
    write_medqa(data, 24)
    out = tmp_path / "run"
    with StubServer(answer_a_or_refuse, delay_s=0.05, fail_once={"Question number 3?"}) as server:
        model = OpenAICompatibleModel(server.url, model_name="stub", concurrency=4, backoff_s=0.01, timeout_s=10)
        # A partial run first (as if interrupted after 10 items) ...
        cfg = EvalConfig(model=f"openai:{server.url}", model_name="stub", benchmark="medqa", data=data, out=out,
                         limit=10, progress=False, n_resamples=200)
        first = run_eval(cfg, model=model)
        assert first["n_generated"] == 10 and server.requests == 11  # 10 items + 1 retry of the injected 500
        assert first["n_errors"] == 0
        # ... then the full run asks only for the 14 missing items, with 4 requests in flight.
        cfg.limit = None
        full = run_eval(cfg, model=model)
        assert full["n_cached"] == 10 and full["n_generated"] == 14 and server.requests == 25
        assert server.max_in_flight == 4
        # Gold cycles A-D: 'A' is right for k % 4 == 0 unless k % 5 == 0 (refusal, scored wrong).
        expected = [k % 4 == 0 and k % 5 != 0 for k in range(24)]
        assert full["metrics"]["accuracy"] == pytest.approx(sum(expected) / 24)
        assert full["metrics"]["abstention_rate"] == pytest.approx(5 / 24)
        lo, hi = full["ci95"]["accuracy"]
        assert lo <= full["metrics"]["accuracy"] <= hi
        # A rerun through the CLI (model built from the spec) sends no request at all.
        rc = main(["eval", "run", "--model", f"openai:{server.url}", "--model-name", "stub", "--benchmark", "medqa",
                   "--data", str(data), "--out", str(out), "--quiet", "--json"])
        assert rc == 0 and server.requests == 25
    rows = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    assert len(rows) == 24
    assert rows[0]["parsed"] is None and rows[0]["raw_output"] == "I cannot answer that."  # abstained, not guessed
    assert rows[4]["parsed"] == "A" and rows[4]["score"] == {"correct": True}
    assert "Question number 4?" in rows[4]["prompt"]["user"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["prompt_version"] == json.loads((out / "run.json").read_text())["prompt_version"]
    # Rescoring needs only the folder and reproduces the numbers.
    again = rescore(out, n_resamples=200)
    assert again["metrics"] == summary["metrics"]


def test_failed_requests_are_errors_and_retried_on_resume(tmp_path):
    data = tmp_path / "test.jsonl"
    write_medqa(data, 6)
    out = tmp_path / "run"
    cfg = EvalConfig(model="openai:unused", model_name="stub", benchmark="medqa", data=data, out=out, progress=False,
                     n_resamples=100)
    with StubServer(answer_a_or_refuse, fail_always={"Question number 4?"}) as server:
        cfg.model = f"openai:{server.url}"
        model = OpenAICompatibleModel(server.url, model_name="stub", concurrency=2, max_retries=1, backoff_s=0.01)
        s = run_eval(cfg, model=model)
        assert s["n_errors"] == 1 and server.requests == 7  # 5 answers + 2 attempts for item 4
        [(cause, count)] = s["error_causes"].items()
        assert "gave up after 2 attempts (HTTP 500" in cause and count == 1
        assert s["metrics"]["accuracy"] == 0.0  # item 4, the only one 'A' gets right, failed: counted wrong
        assert s["score_valid"] and s["error_share"] == pytest.approx(1 / 6)
        assert s["answered"] == {"n": 5, "metrics": {"accuracy": 0.0, "abstention_rate": pytest.approx(2 / 5)}}  # items 0 and 5 refused
        server.fail_always.clear()
        s = run_eval(cfg, model=model)
        assert s["n_errors"] == 0 and s["n_generated"] == 1 and server.requests == 8
        assert s["metrics"]["accuracy"] == pytest.approx(1 / 6)
        assert "answered" not in s and s["error_causes"] == {}


def test_a_run_where_most_requests_fail_has_no_score_and_exits_non_zero(tmp_path, capsys):
    data = tmp_path / "test.jsonl"
    write_medqa(data, 6)
    out = tmp_path / "run"
    args = ["eval", "run", "--model", "", "--model-name", "stub", "--benchmark", "medqa", "--data", str(data),
            "--out", str(out), "--quiet", "--max-retries", "0"]
    with StubServer(answer_a_or_refuse, fail_always={"Question number"}) as server:
        args[3] = f"openai:{server.url}"
        rc = main(args)
    captured = capsys.readouterr()
    assert rc != 0
    err = captured.err.strip().splitlines()
    # The causes, counted, one line each, then the one-line error; no record contents.
    assert err[0] == "6 of 6 request(s) failed:"
    assert err[1].startswith("  6 x ") and "HTTP 500" in err[1]
    assert err[-1].startswith(f"medfuse: error: {out}: 6 of 6 requests failed (100%, above --max-error-share 0.5)")
    assert len(err) == 3 and "Question number" not in captured.err and "Traceback" not in captured.err
    assert "accuracy" not in captured.out  # no score table for a run that did not answer
    summary = json.loads((out / "summary.json").read_text())
    assert summary["score_valid"] is False and summary["metrics"] == {"accuracy": None, "abstention_rate": None}
    assert summary["ci95"] == {} and summary["error_causes"] == {next(iter(summary["error_causes"])): 6}
    # The threshold is a flag: allowing every request to fail scores them all as wrong.
    assert main(["eval", "rescore", str(out), "--max-error-share", "1", "--json"]) == 0
    rescored = json.loads(capsys.readouterr().out)
    assert rescored["score_valid"] is True and rescored["metrics"]["accuracy"] == 0.0
    assert main(["eval", "rescore", str(out), "--max-error-share", "2"]) == 2
    assert capsys.readouterr().err.strip() == "medfuse: error: --max-error-share must lie in [0, 1], got 2.0"


def test_folder_holds_one_model(tmp_path):
    data = tmp_path / "test.jsonl"
    write_medqa(data, 2)
    with StubServer(answer_a_or_refuse) as server:
        cfg = EvalConfig(model=f"openai:{server.url}", model_name="stub", benchmark="medqa", data=data,
                         out=tmp_path / "run", progress=False, n_resamples=50)
        run_eval(cfg)
        cfg.model_name = "other-model"
        with pytest.raises(MedfuseError, match="holds a run of model_id"):
            run_eval(cfg)


def test_vqa_judge_is_reported_beside_rule_based_scores(tmp_path, fixtures):
    def vqa_answer(text: str) -> str:
        return "<answer>yes</answer>" if text.startswith("Are regions") else "<answer>lower lobe on the right</answer>"

    with StubServer(vqa_answer) as model_server, StubServer(lambda t: "<answer>yes</answer>") as judge_server:
        cfg = EvalConfig(model=f"openai:{model_server.url}", model_name="m", benchmark="vqa-rad",
                         data=fixtures / "benchmarks/vqa_rad", out=tmp_path / "run", progress=False,
                         judge=judge_server.url, judge_model="judge", n_resamples=100)
        s = run_eval(cfg)
        assert judge_server.requests == 2  # the two open questions only
        run_eval(cfg)
        assert judge_server.requests == 2 and model_server.requests == 3  # both cached
    assert s["metrics"]["closed_accuracy"] == 1.0
    assert s["metrics"]["open_exact"] == 0.0  # rule-based: no exact match ...
    assert s["judged"]["open_accuracy"] == 1.0  # ... the judge's verdict sits beside it
    assert "judged" not in s["metrics"] and s["judged"]["n_judged"] == 2


def test_diagnosis_run_and_report(tmp_path, fixtures):
    def diagnose(text: str) -> str:
        return "<think>irregular rhythm</think><answer>Atrial Fibrillation; hypertension</answer>"

    with StubServer(diagnose) as server:
        runs = []
        for name in ("a", "b"):
            cfg = EvalConfig(model=f"openai:{server.url}", model_name=name, benchmark="medtvt-qa",
                             data=fixtures / "benchmarks/medtvt_qa", out=tmp_path / name, progress=False, n_resamples=100)
            s = run_eval(cfg)
            runs.append(tmp_path / name)
        mc = EvalConfig(model=f"openai:{server.url}", model_name="a", benchmark="mmlu-medical",
                        data=fixtures / "benchmarks/mmlu", out=tmp_path / "mc", progress=False, n_resamples=100)
        run_eval(mc)
    assert s["metrics"]["jaccard"] == pytest.approx((1.0 + 0.0) / 2)  # exact on item 1, disjoint on item 2
    paths = write_report([*runs, tmp_path / "mc"], tmp_path / "report")
    names = {p.name for p in paths}
    assert {"report.md", "report.html", "medtvt-qa_disease_f1.png"} <= names
    assert any(n.endswith("_confusion.png") for n in names)
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## medtvt-qa (diagnosis)" in md and "## mmlu-medical (multiple_choice)" in md
    assert "No calibration curve" in md


def test_tiny_hf_causal_lm_end_to_end(tmp_path, fixtures):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = "the answer is a b c d e <answer> </answer> question which enzyme drug artery patient".split()
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[BOS]", "[EOS]", *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                        bos_token="[BOS]", eos_token="[EOS]")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
                         pad_token_id=0, bos_token_id=2, eos_token_id=3)
    model_dir = tmp_path / "tiny-llama"
    LlamaForCausalLM(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)

    cfg = EvalConfig(model=f"hf:{model_dir}", benchmark="medqa", data=fixtures / "benchmarks/medqa/US",
                     out=tmp_path / "run", max_new_tokens=6, batch_size=2, progress=False, n_resamples=100)
    s = run_eval(cfg)
    assert s["n_items"] == 2 and s["n_generated"] == 2 and s["n_errors"] == 0
    assert s["model_id"].startswith(f"hf:{model_dir.resolve()}@")
    rows = [json.loads(line) for line in (tmp_path / "run" / "items.jsonl").read_text().splitlines()]
    for row in rows:
        assert isinstance(row["raw_output"], str)
        assert set(row["raw_output"].split()) <= set(vocab)  # decoded from the tiny vocabulary
        assert row["parsed"] in (None, *"ABCDE")
        assert row["score"] == {"correct": row["parsed"] == row["gold"]}
    # The run's accuracy is exactly the share of its parsed answers that equal the gold.
    assert s["metrics"]["accuracy"] == sum(r["parsed"] == r["gold"] for r in rows) / 2
    again = run_eval(cfg)  # fully cached: the model is not loaded again
    assert again["n_cached"] == 2 and again["n_generated"] == 0


def test_create_model_passes_endpoint_options_to_openai_models():
    from medfuse.eval.models import create_model

    # With --model-name given, nothing is sent to the endpoint when the adapter is built.
    model = create_model("openai:http://127.0.0.1:9/v1", model_name="stub", concurrency=3, backoff_s=0.5, batch_size=2)
    assert (model.concurrency, model.backoff_s, model.max_retries, model.timeout_s) == (3, 0.5, 5, 120.0)
    assert model.model_id == "openai:http://127.0.0.1:9/v1#stub"


def test_report_out_must_be_a_writable_folder(tmp_path, capsys):
    data = tmp_path / "test.jsonl"
    write_medqa(data, 2)
    with StubServer(answer_a_or_refuse) as server:
        run_eval(EvalConfig(model=f"openai:{server.url}", model_name="stub", benchmark="medqa", data=data,
                            out=tmp_path / "run", progress=False, n_resamples=20))
    a_file = tmp_path / "report.md"
    a_file.write_text("keep me")
    assert main(["eval", "report", str(tmp_path / "run"), "--out", str(a_file)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"medfuse: error: {a_file}: exists and is not a folder")
    assert a_file.read_text() == "keep me"
    with pytest.raises(InputError, match="cannot create the report folder"):
        write_report([tmp_path / "run"], a_file / "sub")


def test_deeply_nested_run_files_give_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text("[" * 100_000 + "]" * 100_000)
    (out / "items.jsonl").write_text("{}\n")
    assert main(["eval", "rescore", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"medfuse: error: {out / 'run.json'}: invalid JSON (nested too deeply)\n"
