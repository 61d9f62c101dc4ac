"""The llama.cpp decode backend: GGUF export of the merged backbone, and greedy decoding of
fused-embedding prompts that gives the torch path's tokens (prefix KV cache, cohorts,
logits processors, stop conditions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("llama_cpp")
pytest.importorskip("gguf")

from medfuse.errors import InputError
from medfuse.model.gguf_export import export_gguf, gguf_signature
from medfuse.model.llamacpp import LlamaCppDecoder
from medfuse.model.llm import FusedTokens, MedfuseLM, chat_prompt

pytestmark = pytest.mark.usefixtures("one_torch_thread")

D_MODEL = 16
K = 3  # fused tokens per modality
SYSTEM = "You are a careful physician. Reason from the evidence, then answer."
USERS = (
    "ECG: <ecg>\nLabs: <labs>\nWhich diseases are present?",
    "ECG: <ecg> Labs: <labs> Is there pneumonia and sepsis? Answer inside <answer></answer>.",
    "ECG: <ecg>\nLabs: <labs>\nWhich?",
    "Labs: <labs>\nECG: <ecg>\nChest pain, troponin high. Which diseases are present?",
    "ECG: <ecg>\nLabs: <labs>\nHeart rate 112 bpm.",
)


@pytest.fixture(scope="module")
def tiny_lora() -> MedfuseLM:
    """The tiny Llama with a LoRA adapter whose B matrices are non-zero (so merging matters)."""
    lm = MedfuseLM.tiny(d_model=D_MODEL, seed=0)
    lm.add_lora(r=4, alpha=8)
    with torch.no_grad():
        g = torch.Generator().manual_seed(3)
        for name, param in lm.lm.named_parameters():
            if "lora_B" in name:
                param.copy_(0.05 * torch.randn(param.shape, generator=g))
    return lm.eval()


@pytest.fixture(scope="module")
def gguf_file(tiny_lora: MedfuseLM, tmp_path_factory) -> Path:
    return export_gguf(tiny_lora, tmp_path_factory.mktemp("gguf") / "tiny.gguf", out_type="f32")


@pytest.fixture(scope="module")
def decoder(tiny_lora: MedfuseLM, gguf_file: Path):
    dec = LlamaCppDecoder(gguf_file, tiny_lora, n_threads=1, n_ctx=2048, n_seq_max=4)
    yield dec
    dec.close()


def _fused(batch: int, seed: int = 1) -> FusedTokens:
    """ECG at positions 0-2 (absent in case 2), labs at 3-5."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, 2 * K, dtype=torch.bool)  # (B, N)
    if batch > 2:
        mask[2, :K] = False
    return FusedTokens(torch.randn(batch, 2 * K, D_MODEL, generator=g), mask,
                       {"ecg": slice(0, K), "labs": slice(K, 2 * K)})


def _prompts(lm: MedfuseLM, n: int) -> list[str]:
    return [chat_prompt(lm.tokenizer, USERS[i % len(USERS)], SYSTEM) for i in range(n)]


def _one(fused: FusedTokens | None, i: int) -> FusedTokens | None:
    if fused is None:
        return None
    return FusedTokens(fused.tokens[i:i + 1], fused.token_mask[i:i + 1], fused.modality_slices)


def _assert_torch_greedy(lm: MedfuseLM, prompts: list[str], fused: FusedTokens, llama_ids: list[list[int]],
                         tol: float = 1e-2) -> int:
    """Every token llama.cpp chose is torch's greedy choice given the same history, or
    within `tol` of it (a near tie, where fp32 summation order may decide); returns how
    many tokens were checked. Teacher-forced on llama.cpp's tokens, so one tie does not
    end the comparison. (The tiny model's logits are nearly flat and its in-memory BPE
    tokenizer varies between processes, so exact ties do occur.)"""
    suppressed = list(lm.placeholder_ids.values())
    checked = 0
    for i, ids in enumerate(llama_ids):
        with torch.no_grad():
            logits = lm([prompts[i]], _one(fused, i), labels=[ids]).logits[0, -len(ids) - 1:-1]  # (n, V)
        logits[:, suppressed] = -torch.inf
        for step, token in enumerate(ids):
            best = int(logits[step].argmax())
            assert token == best or float(logits[step, best] - logits[step, token]) < tol, (i, step)
            checked += 1
    return checked


def test_llamacpp_greedy_tokens_equal_torch_for_fused_prompts(tiny_lora, decoder):
    prompts, fused = _prompts(tiny_lora, 3), _fused(3)
    llama_ids = decoder.generate_ids(prompts, fused, max_new_tokens=24)
    assert _assert_torch_greedy(tiny_lora, prompts, fused, llama_ids) == sum(map(len, llama_ids)) > 0
    # The MedfuseLM.generate-shaped entry point decodes the same ids.
    assert decoder.generate(prompts, fused, max_new_tokens=24) == tiny_lora.tokenizer.batch_decode(
        llama_ids, skip_special_tokens=True)


def test_first_token_logits_agree_within_tolerance(tiny_lora, decoder):
    prompts, fused = _prompts(tiny_lora, 1), _fused(1)
    rows = decoder.prompt_rows(prompts, fused)
    seen: list[np.ndarray] = []
    decoder.generate_embeds(rows, max_new_tokens=1, logits_processor=lambda ids, s: seen.append(s.copy()) or s)
    with torch.no_grad():
        logits = tiny_lora(prompts, fused).logits[0, -1].numpy()  # (V,)
    # fp32 export: only the summation order of llama.cpp's kernels differs from torch.
    finite = np.isfinite(seen[0])
    assert np.abs(seen[0][finite] - logits[finite]).max() < 1e-2


def test_export_merges_lora_on_a_copy_and_is_cached_by_signature(tiny_lora, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDFUSE_CACHE", str(tmp_path))
    first = export_gguf(tiny_lora, out_type="f32")
    assert first.parent == tmp_path / "gguf" and first.is_file()
    assert tiny_lora.has_lora  # the caller's model keeps its adapter
    stamp = first.stat().st_mtime_ns
    assert export_gguf(tiny_lora, out_type="f32") == first and first.stat().st_mtime_ns == stamp
    assert not list((tmp_path / "gguf").glob(".*tmp*"))  # nothing half-written left behind
    before = gguf_signature(tiny_lora, "f32")
    lora_b = next(p for n, p in tiny_lora.lm.named_parameters() if "lora_B" in n)
    with torch.no_grad():
        lora_b.add_(1.0)
    try:
        assert gguf_signature(tiny_lora, "f32") != before  # a retrained adapter is a new file
    finally:
        with torch.no_grad():
            lora_b.sub_(1.0)


def test_prefix_cache_reuses_the_shared_system_prompt_without_changing_tokens(tiny_lora, decoder):
    prompts, fused = _prompts(tiny_lora, 2), _fused(2)
    decoder.clear_prefix_cache()
    cold = decoder.generate_ids(prompts, fused, max_new_tokens=12, use_prefix_cache=False)
    decoder.generate_ids(prompts[:1], FusedTokens(fused.tokens[:1], fused.token_mask[:1], fused.modality_slices),
                         max_new_tokens=12)
    warm = decoder.generate_ids(prompts[1:], FusedTokens(fused.tokens[1:], fused.token_mask[1:], fused.modality_slices),
                                max_new_tokens=12)
    stats = decoder.stats
    system_rows = len(tiny_lora.tokenizer(chat_prompt(tiny_lora.tokenizer, "x", SYSTEM).split("<|im_start|>user")[0],
                                          add_special_tokens=False)["input_ids"])
    # The second case reused at least the system turn and evaluated only its own rows.
    assert system_rows <= stats.prefix_reused < stats.prompt_rows[0]
    assert warm == cold[1:]


def test_cohort_larger_than_the_sequence_slots_decodes_in_groups(tiny_lora, decoder):
    prompts, fused = _prompts(tiny_lora, 5), _fused(5, seed=4)
    together = decoder.generate_ids(prompts, fused, max_new_tokens=10)  # 3 case slots -> groups of 3 and 2
    one_by_one = [decoder.generate_ids([p], FusedTokens(fused.tokens[i:i + 1], fused.token_mask[i:i + 1],
                                                        fused.modality_slices), max_new_tokens=10)[0]
                  for i, p in enumerate(prompts)]
    assert together == one_by_one
    _assert_torch_greedy(tiny_lora, prompts, fused, together)


def test_logits_processor_steers_and_stop_string_ends_the_sequence(tiny_lora, decoder):
    forced = tiny_lora.tokenizer("ok</answer> and more text", add_special_tokens=False)["input_ids"]

    def follow(ids: list[int], scores: np.ndarray) -> np.ndarray:
        out = np.full_like(scores, -np.inf)
        out[forced[len(ids)]] = 0.0
        return out

    prompts, fused = _prompts(tiny_lora, 2), _fused(2)
    ids = decoder.generate_ids(prompts, fused, max_new_tokens=len(forced), logits_processor=[follow, None],
                               stop_strings=["</answer>"])
    text = tiny_lora.tokenizer.decode(ids[0])
    assert text.endswith("</answer>") and ids[0] == forced[: len(ids[0])] and len(ids[0]) < len(forced)
    assert len(ids[1]) == len(forced)  # the unsteered case runs to the token limit


def test_eos_stops_a_sequence_and_suppressed_tokens_are_never_chosen(tiny_lora, decoder):
    eos = tiny_lora.tokenizer.eos_token_id
    prompts, fused = _prompts(tiny_lora, 1), _fused(1)
    free = decoder.generate_ids(prompts, fused, max_new_tokens=8)[0]

    def eos_third(ids: list[int], scores: np.ndarray) -> np.ndarray:
        if len(ids) == 2:
            scores[eos] = np.inf
        return scores

    stopped = decoder.generate_ids(prompts, fused, max_new_tokens=8, logits_processor=eos_third)[0]
    assert stopped == free[:2] + [eos]
    banned = decoder.generate_ids(prompts, fused, max_new_tokens=8, suppress_tokens=[free[0]])[0]
    assert free[0] not in banned


def test_missing_gguf_is_one_input_error(tmp_path):
    with pytest.raises(InputError, match="no such GGUF file"):
        LlamaCppDecoder(tmp_path / "absent.gguf")


def test_backend_choice_env_switch_and_torch_fallback(tiny_lora, tmp_path, monkeypatch):
    from medfuse.errors import ConfigError
    from medfuse.model import llamacpp

    monkeypatch.setenv("MEDFUSE_CACHE", str(tmp_path))
    monkeypatch.delenv(llamacpp.DECODER_ENV, raising=False)
    assert llamacpp.resolve_backend() == "torch"  # torch unless asked
    monkeypatch.setenv(llamacpp.DECODER_ENV, "llamacpp")
    assert llamacpp.resolve_backend() == "llamacpp"
    with pytest.raises(ConfigError, match="not one of"):
        llamacpp.resolve_backend("vllm")
    prompts, fused = _prompts(tiny_lora, 2), _fused(2)
    # Sampling is torch's: the caller is told to fall back.
    assert llamacpp.generate_with_backend(tiny_lora, prompts, fused, 8, do_sample=True) is None
    # The model's decoder opens once (f32 here, for exact tokens) and serves later calls.
    decoder = llamacpp.decoder_for(tiny_lora, out_type="f32", n_threads=1, n_ctx=1024)
    try:
        assert decoder.gguf_path.parent == tmp_path / "gguf"
        texts = llamacpp.generate_with_backend(tiny_lora, prompts, fused, 16, do_sample=False)
        ids = decoder.generate_ids(prompts, fused, max_new_tokens=16)
        assert llamacpp.decoder_for(tiny_lora) is decoder
        # diagnose hands transformers a processor list holding per-case constraints; the
        # llama.cpp path runs each case's constraint on its own sequence.
        from transformers import LogitsProcessorList

        from medfuse.model.constrained import HFReasoningProcessor

        forced = ids[1][:6]

        def follow(generated: list[int], scores: np.ndarray) -> np.ndarray:
            out = np.full_like(scores, -np.inf)
            out[forced[len(generated)]] = 0.0
            return out

        steered = llamacpp.generate_with_backend(
            tiny_lora, prompts, fused, 6, logits_processor=LogitsProcessorList([HFReasoningProcessor([follow, None])]))
        assert steered == tiny_lora.tokenizer.batch_decode([forced, forced], skip_special_tokens=True)
    finally:
        del tiny_lora.__dict__["_llamacpp_decoder"]
        decoder.close()
    assert texts == tiny_lora.tokenizer.batch_decode(ids, skip_special_tokens=True)
    _assert_torch_greedy(tiny_lora, prompts, fused, ids)
    monkeypatch.setattr(llamacpp, "llamacpp_available", lambda: False)
    assert llamacpp.resolve_backend("llamacpp") == "torch"  # not installed: torch, with a notice


def test_medfuse_generate_decodes_with_llamacpp_when_asked(tmp_path, monkeypatch):
    from medfuse.model import MedFuse, llamacpp

    monkeypatch.setenv("MEDFUSE_CACHE", str(tmp_path))
    monkeypatch.delenv(llamacpp.DECODER_ENV, raising=False)
    model = MedFuse.build(tiny_llm=True)
    decoder = llamacpp.decoder_for(model, out_type="f32", n_threads=1, n_ctx=1024)
    prompts = [(SYSTEM, "Which diseases are present?"), (SYSTEM, "Heart rate 112 bpm. Which?")]
    texts = [chat_prompt(model.lm.tokenizer, user, system) for system, user in prompts]
    try:
        fast = model.generate(prompts, None, max_new_tokens=8, backend="llamacpp")
        ids = decoder.generate_ids(texts, None, max_new_tokens=8)
        assert fast == model.lm.tokenizer.batch_decode(ids, skip_special_tokens=True)
        _assert_torch_greedy(model.lm, texts, None, ids)
        # The default stays torch: the llama.cpp decoder is not touched.
        monkeypatch.setattr(decoder, "generate", lambda *a, **k: pytest.fail("llama.cpp used without being asked"))
        assert len(model.generate(prompts, None, max_new_tokens=8)) == 2
    finally:
        decoder.close()


def test_forced_scaffold_runs_are_fed_in_one_call_with_the_same_tokens(tiny_lora, decoder):
    """diagnose's constraint forces "<think>Heart failure:" etc.; those runs are appended as
    one batch (fewer llama_decode calls), and the tokens equal one-call-per-token decoding."""
    from medfuse.model.constrained import (
        FactVocabulary,
        ReasoningConstraint,
        ReasoningPlan,
        token_texts,
    )

    tok = tiny_lora.tokenizer

    def encode(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    plan = (ReasoningPlan().forced("<think>Heart failure: rests on").free(8, cite_ids=[1, 2])
            .forced(" Not reported: sepsis.</think>").forced(""))

    def constraint() -> ReasoningConstraint:
        return ReasoningConstraint(plan, FactVocabulary(numbers=frozenset({"112"})), token_texts(tok), encode,
                                   tok.eos_token_id, banned_ids=tiny_lora.placeholder_ids.values(), top_k=1)

    prompts, fused = _prompts(tiny_lora, 2), _fused(2, seed=6)
    rows = decoder.prompt_rows(prompts, fused)
    budget = constraint().tokens_needed()
    one_by_one = decoder.generate_embeds(rows, max_new_tokens=budget, eos_token_id=tok.eos_token_id,
                                         logits_processor=[constraint(), constraint()], draft_forced=False)
    calls_one_by_one = decoder.stats.decode_steps
    drafted = decoder.generate_embeds(rows, max_new_tokens=budget, eos_token_id=tok.eos_token_id,
                                      logits_processor=[constraint(), constraint()])
    stats = decoder.stats
    assert drafted == one_by_one
    assert tok.decode(drafted[0]).startswith("<think>Heart failure: rests on")
    assert drafted[0][-1] == tok.eos_token_id
    assert stats.draft_accepted >= len(encode("<think>Heart failure: rests on")) - 1
    assert stats.decode_steps < calls_one_by_one
    assert stats.fed_tokens >= sum(len(ids) - 1 for ids in drafted)


def test_a_wrong_draft_is_rolled_back_and_the_real_pick_kept(tiny_lora, decoder):
    """A processor whose single allowed token depends on the scores in a way the probes
    cannot see: drafts are proposed and rejected, their KV cells removed, and the tokens
    stay those of one-call-per-token decoding (stale cells would change later logits)."""
    even, odd = 40, 41

    def parity(ids: list[int], scores: np.ndarray) -> np.ndarray:
        out = np.full_like(scores, -np.inf)
        out[even if int(np.argmax(scores)) % 2 == 0 else odd] = 0.0
        return out

    prompts, fused = _prompts(tiny_lora, 3), _fused(3, seed=8)
    rows = decoder.prompt_rows(prompts, fused)
    expected = decoder.generate_embeds(rows, max_new_tokens=20, logits_processor=parity, draft_forced=False)
    got = decoder.generate_embeds(rows, max_new_tokens=20, logits_processor=parity)
    assert got == expected
    assert 0 <= decoder.stats.draft_accepted < decoder.stats.drafted
