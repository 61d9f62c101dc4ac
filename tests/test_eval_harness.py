"""End-to-end evaluation runs against a local OpenAI-compatible stub server and a tiny
Hugging Face causal LM built from a config (no network, no downloaded weights)."""

from __future__ import annotations

import json
import re

import pytest
from eval_stub_server import StubServer, write_medqa

# The metrics and parsers come from the eval kit's metric modules; without them there is
# nothing to score.
pytest.importorskip("medfuse.eval.parsers")
pytest.importorskip("medfuse.eval.metrics.multiple_choice")
pytest.importorskip("medfuse.formats")

from medfuse.cli import main  # noqa: E402
from medfuse.errors import MedfuseError  # noqa: E402
from medfuse.eval.harness import EvalConfig, rescore, run_eval  # noqa: E402
from medfuse.eval.models.openai_compat import OpenAICompatibleModel  # noqa: E402
from medfuse.eval.report import write_report  # noqa: E402


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
        assert "gave up after 2 attempts (HTTP 500" in s["errors"][0]
        assert s["metrics"]["accuracy"] == 0.0  # item 4, the only one 'A' gets right, failed: counted wrong
        server.fail_always.clear()
        s = run_eval(cfg, model=model)
        assert s["n_errors"] == 0 and s["n_generated"] == 1 and server.requests == 8
        assert s["metrics"]["accuracy"] == pytest.approx(1 / 6)


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
    torch = pytest.importorskip("torch")
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
    assert 0.0 <= s["metrics"]["accuracy"] <= 1.0
    again = run_eval(cfg)  # fully cached: the model is not loaded again
    assert again["n_cached"] == 2 and again["n_generated"] == 0


def test_create_model_passes_endpoint_options_to_openai_models():
    from medfuse.eval.models import create_model

    # With --model-name given, nothing is sent to the endpoint when the adapter is built.
    model = create_model("openai:http://127.0.0.1:9/v1", model_name="stub", concurrency=3, backoff_s=0.5, batch_size=2)
    assert (model.concurrency, model.backoff_s, model.max_retries, model.timeout_s) == (3, 0.5, 5, 120.0)
    assert model.model_id == "openai:http://127.0.0.1:9/v1#stub"
