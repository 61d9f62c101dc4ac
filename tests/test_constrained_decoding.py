"""The constrained decoder core: whatever the scores, the output follows the plan and the rules."""

from __future__ import annotations

import re

import numpy as np
import pytest

from medfuse.model.constrained import (
    FactVocabulary,
    HFReasoningProcessor,
    ReasoningConstraint,
    ReasoningPlan,
)

# A small vocabulary with tempting wrong pieces: a lead (V4) and numbers (812) the evidence
# lacks, an id (E9) not in the list, an unreported disease, newlines and tags.
VOCAB = ["<eos>", "\n", "<think>", "</think>", "Heart failure:", "Sepsis:", " Evidence: [E", " supported", " by",
         " BNP", " lactate", " T", " inversion", " V", "2", "3", "4", "5", "6", "8", "9", "0", "1", ".", " (", ")",
         " high", " [", "E", "]", ", E", "],", " pneumonia", " and", " 900", " 812", " 4.1", "<answer>", " is",
         " raised", " no"]
EOS = 0
FACTS = FactVocabulary(numbers=frozenset({"900", "4.1"}), leads=frozenset({"V2", "V3"}))


def greedy_encoder(vocab: list[str]):
    """A tokenizer for `vocab`: greedy longest match (id 0, the end of sequence, is never a piece)."""

    def encode(text: str) -> list[int]:
        ids, i = [], 0
        while i < len(text):
            best = max((k for k, piece in enumerate(vocab) if k and piece and text.startswith(piece, i)),
                       key=lambda k: len(vocab[k]))
            ids.append(best)
            i += len(vocab[best])
        return ids

    return encode


encode = greedy_encoder(VOCAB)  # the forced scaffold texts are in VOCAB


def plan() -> ReasoningPlan:
    return (ReasoningPlan()
            .forced("<think>Heart failure:").free(14, cite_ids={1, 3}, forbidden=["pneumonia"])
            .forced(" Evidence: [E").citation(6, {1, 3}).forced(".")
            .forced("\nSepsis:").free(10, cite_ids={2}, forbidden=["pneumonia"])
            .forced("</think>").forced(""))


def run(constraint: ReasoningConstraint, scores_for, limit: int = 200) -> list[int]:
    ids: list[int] = []
    for step in range(limit):
        scores = constraint(ids, scores_for(step, ids))
        assert np.isfinite(scores).any(), "every step leaves at least one token"
        token = int(np.argmax(scores))
        ids.append(token)
        if token == EOS:
            break
    return ids


@pytest.mark.parametrize("seed", range(40))
def test_any_scores_give_a_reasoning_that_keeps_every_rule(seed):
    rng = np.random.default_rng(seed)
    constraint = ReasoningConstraint(plan(), FACTS, VOCAB, encode, EOS, reserve=3, top_k=8)
    ids = run(constraint, lambda step, ids: rng.normal(size=len(VOCAB)).astype(np.float32))
    text = "".join(VOCAB[i] for i in ids if i != EOS)
    assert ids[-1] == EOS and len(ids) <= constraint.tokens_needed()
    assert text.startswith("<think>Heart failure:") and text.endswith("</think>")
    hf, sepsis = text[len("<think>"):-len("</think>")].split("\n")
    assert hf.startswith("Heart failure:") and sepsis.startswith("Sepsis:")
    for line, allowed in ((hf, {1, 3}), (sepsis, {2})):
        for body in re.findall(r"\[([^\]]*)\]", line):
            cited = [int(k) for k in re.findall(r"E(\d+)", body)]
            assert set(cited) <= allowed and len(set(cited)) == len(cited), line  # no id twice
        assert line.count("[") == line.count("]") and line.count("(") == line.count(")"), line
        assert line.rstrip().endswith("."), line  # a finished sentence, never cut off
        assert "pneumonia" not in line and "<answer>" not in line
    numbers = re.findall(r"(?<![A-Za-z0-9.\[E])\d+(?:\.\d+)?", re.sub(r"\[[^\]]*\]", "", text))
    assert set(numbers) <= {"900", "4.1"}, text
    assert set(re.findall(r"\bV\d+", text)) <= {"V2", "V3"}, text
    assert "[E" in hf  # the citation sentence holds at least one id


def test_a_model_that_wants_wrong_facts_is_steered_to_allowed_ones():
    # The "model" prefers, in order: the unknown lead V4, the invented 812, id E9, a newline.
    wish = [VOCAB.index(p) for p in (" T", " inversion", " V", "4", " BNP", " 812", " [", "E", "9", "]", "\n")]

    def scores_for(step, ids):
        s = np.zeros(len(VOCAB), dtype=np.float32)
        for rank, token in enumerate(wish):
            s[token] += 10.0 - rank * 0.5
        s[VOCAB.index(".")] += 1.0
        return s

    constraint = ReasoningConstraint(plan(), FACTS, VOCAB, encode, EOS, reserve=3)
    text = "".join(VOCAB[i] for i in run(constraint, scores_for) if i != EOS)
    assert "V4" not in text and "812" not in text and "E9" not in text
    sentences = [w for w in constraint.written if not w.startswith("[E")]
    assert len(sentences) == 2 and all(w.rstrip().endswith(".") for w in sentences)
    assert "[E3]" in constraint.written or "[E1]" in constraint.written


def test_the_prompt_may_precede_the_generated_ids_as_in_llama_cpp():
    rng = np.random.default_rng(0)
    prompt = [VOCAB.index(" is")] * 7
    a = ReasoningConstraint(plan(), FACTS, VOCAB, encode, EOS, reserve=3)
    b = ReasoningConstraint(plan(), FACTS, VOCAB, encode, EOS, reserve=3)
    draws = [rng.normal(size=len(VOCAB)).astype(np.float32) for _ in range(200)]
    ids_a = run(a, lambda step, ids: draws[step])
    ids_b: list[int] = []
    for step in range(200):
        token = int(np.argmax(b(prompt + ids_b, draws[step])))
        ids_b.append(token)
        if token == EOS:
            break
    assert ids_a == ids_b


def test_transformers_adapter_masks_each_row_by_its_own_constraint():
    torch = pytest.importorskip("torch")
    rows = [ReasoningConstraint(plan(), FACTS, VOCAB, encode, EOS), None]
    processor = HFReasoningProcessor(rows)
    scores = torch.zeros(2, len(VOCAB))
    out = processor(torch.zeros(2, 0, dtype=torch.long), scores)
    first = encode("<think>Heart failure:")[0]
    assert torch.isfinite(out[0]).sum() == 1 and torch.isfinite(out[0, first])
    assert torch.equal(out[1], scores[1])  # a row without a constraint is untouched


# --------------------------------------------------------------------------- the decoder and the checker agree

@pytest.fixture(scope="module")
def synthetic_cases():
    """Fresh synthetic cases (all modalities the default mix gives) with their evidence."""
    from medfuse.interpret.case import interpret_case
    from medfuse.synth.cohort import SynthConfig, synth_case

    cases = [synth_case(7, i, SynthConfig()) for i in range(10)]
    return [(case, interpret_case(case)) for case in cases]


def _plan_vocabulary(plan: ReasoningPlan) -> list[str]:
    """Pieces of every text the plan may write (words with their leading space, single
    characters), plus tempting wrong ones: a garbled test name, an unlisted lead, a number,
    an unreported disease, a newline and a tag."""
    texts = [s.text for s in plan.segments if s.text] + [o for s in plan.segments for o in s.options]
    texts += [s.separator + s.end for s in plan.segments if s.kind == "choice"]
    pieces = {"<eos>", "\n", "<answer>", " Sokolow", "ljen", " BNP", " troponin", " V4", "812", " pneumonia",
              " E", "E", "[", "]", ", E", " Evidence: [E", *(chr(c) for c in range(32, 127))}
    for text in texts:
        pieces.update(text)  # single characters: every text can be spelt
        pieces.update(re.findall(r" ?[^ ]+", text))
    return ["<eos>", *sorted(pieces - {"<eos>"})]


@pytest.mark.parametrize("seed", range(6))
def test_what_the_constraint_allows_the_checker_keeps(synthetic_cases, seed):
    """Over random head decisions and random scores, every reasoning the constrained decoder
    can write survives the faithfulness check whole and is consistent with the decision."""
    from medfuse.knowledge.panel import load_panel
    from medfuse.model.diagnosis import rationale_filter
    from medfuse.model.faithfulness import check_consistency, check_reasoning
    from medfuse.model.prompt import (
        HeadDecision,
        evidence_facts,
        numbered_evidence,
        reasoning_plan,
    )

    panel = load_panel()
    rng = np.random.default_rng(seed)
    for case, evidence in synthetic_cases:
        keys = list(rng.permutation(panel.keys))
        n = int(rng.integers(0, 4))
        decision = HeadDecision(reported=tuple((k, 0.9) for k in keys[:n]),
                                considered=tuple((k, 0.2) for k in keys[n:n + 2]))
        numbered = numbered_evidence(evidence)
        reported = [k for k, _ in decision.reported]
        accept = rationale_filter(case, evidence, numbered, reported, panel)
        draft = reasoning_plan(decision, numbered, panel, accept=accept)
        vocab = _plan_vocabulary(draft)
        encode_with = greedy_encoder(vocab)

        plan = reasoning_plan(decision, numbered, panel, accept=accept, token_count=lambda s: len(encode_with(s)))
        constraint = ReasoningConstraint(plan, evidence_facts(numbered), vocab, encode_with, 0, reserve=3, top_k=8)
        ids: list[int] = []
        for _ in range(constraint.tokens_needed() + 5):
            scores = constraint(ids, rng.normal(size=len(vocab)).astype(np.float32) * 3)
            allowed = np.flatnonzero(np.isfinite(scores))
            assert allowed.size, "every step leaves at least one token"
            token = int(rng.choice(allowed)) if rng.random() < 0.5 else int(np.argmax(scores))
            ids.append(token)
            if token == 0:
                break
        text = "".join(vocab[i] for i in ids if i)
        assert ids[-1] == 0 and len(ids) <= constraint.tokens_needed(), text
        check = check_reasoning(text, case, evidence, panel, cited=numbered)
        assert not check.dropped and not check.truncated, (text, check.dropped)
        consistency = check_consistency(check.text, reported, panel)
        assert consistency.consistent, (text, consistency.problems)
        assert "Sokolowljen" not in text and "<answer>" not in text
