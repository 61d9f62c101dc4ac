"""Constrained decoding of a reasoning: a scaffold the decoder writes, and rules on what the model may add.

The reasoning `diagnose` shows is a sequence of segments (`ReasoningPlan`): FORCED text
the code writes (`<think>`, "Heart failure:", the line of considered-but-absent diseases,
the end of sequence) and FREE slots in which the model writes one rationale. In a free
slot a token is allowed only when the text it produces keeps these rules:

- a citation is `[E<k>]` / `[E<k>, E<m>]` with ids from the slot's `cite_ids` (the evidence
  the panel ties to the slot's disease); any other bracket is refused;
- a number is a value of the evidence (`FactVocabulary.numbers`, as the prompt writes it);
- an ECG lead (V1..V6, aVR, aVL, aVF, II, III) is one the evidence names;
- no phrase of `forbidden` (the names of diseases the head does not report) is written;
- no newline, tag or end of sequence: the slot ends when its text is a complete sentence
  and the model then picks the first token of the next forced segment; within the last
  `reserve` tokens of the slot's budget only moves that close the sentence are allowed,
  so the output always ends on a complete sentence within the plan's token count.

A CHOICE slot (`ReasoningPlan.choice`) is stricter: its text must spell `lead`, then one
or more whole phrases of its `options` (each at most once) joined by `separator`, then
`end`; the model's scores only decide which options, in which order, and when to stop.
`diagnose` uses it for rationales: the options are the evidence items tied to the
disease, vetted by the faithfulness checker, so a name is either a whole evidence item or
not written at all ("Sokolowljen" cannot be spelt), and the candidates at each step are
the vocabulary pieces that continue an option (found by text, not by scanning the scores).

The core (`ReasoningConstraint`) works on generated token ids and a numpy score vector,
so any decoder can use it: `HFReasoningProcessor` adapts it to a transformers
`LogitsProcessor` (one constraint per batch row), and llama-cpp-python's
`logits_processor` hook calls the constraint directly (`constraint(input_ids, scores)`).

Checking every vocabulary entry at every step would cost ~50 ms in Python; the
constraint checks candidates in descending score order and stops at the first `top_k`
valid ones (greedy decoding is exact; sampling draws from the valid top-k).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

__all__ = [
    "FactVocabulary",
    "HFReasoningProcessor",
    "ReasoningConstraint",
    "ReasoningPlan",
    "Segment",
    "choice_continuations",
    "choice_state",
    "token_texts",
]

_NEG_INF = -np.inf
# A citation in progress or complete: "[E", "[E1", "[E1, E", "[E12]".
_OPEN_CITATION = re.compile(r"\[([^\[\]]*)$")
_CITATION = re.compile(r"\[([^\[\]]*)\]")
_CITATION_BODY = re.compile(r"E(\d+)(?:\s*,\s*E(\d+))*")
_CITATION_PREFIX = re.compile(r"(?:E\d+\s*,\s*)*(?:E\d*|E\d+\s*,)?")
# A number standing alone (not the digits of V4, HbA1c or E3).
_NUMBER = re.compile(r"(?<![A-Za-z0-9])(?<!\d\.)\d+(?:\.\d+)?")
_LEAD = re.compile(r"(?<![A-Za-z0-9])(V\d{1,2}|aV[RLF]|III|II)(?![A-Za-z0-9])")
_OPEN_V_LEAD = re.compile(r"(?<![A-Za-z0-9])V(\d{1,2})$")
_SENTENCE_END = re.compile(r"[.!?。！？]\s*$")
_CITATION_SLOT = re.compile(r"\[(?:E\d+\s*,\s*)*(?:E\d*|E\d+\s*,|E\d+\])")
# Words that carry digits ("HbA1c", "SpO2"): digits right after letters are allowed only in these.
_ALNUM_TERMS = ("hba1c", "a1c", "spo2", "sao2", "pao2", "fio2", "paco2", "b12", "t3", "t4", "nt")


@lru_cache(maxsize=4)
def token_texts(tokenizer: Any) -> tuple[str, ...]:
    """The text each token id decodes to on its own (cached per tokenizer; ~1 s for 49k ids)."""
    return tuple(tokenizer.decode([i]) for i in range(len(tokenizer)))


@dataclass(frozen=True)
class FactVocabulary:
    """What a rationale may quote: evidence values as the prompt writes them and ECG lead names."""

    numbers: frozenset[str] = frozenset()
    leads: frozenset[str] = frozenset()

    def number_ok(self, text: str, open_end: bool) -> bool:
        """A complete number must be a value; an unfinished one ("8", "2.") must start one."""
        if not open_end:
            return text in self.numbers
        return any(v.startswith(text) for v in self.numbers) or (text.endswith(".") and text[:-1] in self.numbers)


@dataclass(frozen=True)
class Segment:
    """FORCED text (`text`), or a FREE slot of at most `budget` tokens (`text` is None)."""

    text: str | None = None
    budget: int = 0
    cite_ids: frozenset[int] = frozenset()  # evidence ids this slot may cite
    forbidden: tuple[str, ...] = ()  # lower-case phrases this slot may not write
    # "sentence": the slot ends on a finished sentence. "citation": the forced text before
    # it opened a citation ("[E"), the slot writes the ids and ends on the closing "]".
    kind: str = "sentence"
    # "choice": the slot writes `lead`, then options (whole phrases, each at most once)
    # joined by `separator`, then `end`: `lead opt (separator opt)* end`.
    options: tuple[str, ...] = ()
    separator: str = ", "
    lead: str = ""
    end: str = "."


@dataclass
class ReasoningPlan:
    """The segments of one reasoning in order; the last one should force the end of sequence."""

    segments: list[Segment] = field(default_factory=list)

    def forced(self, text: str) -> ReasoningPlan:
        self.segments.append(Segment(text=text))
        return self

    def free(self, budget: int, cite_ids: Iterable[int] = (), forbidden: Iterable[str] = ()) -> ReasoningPlan:
        """A rationale slot: one finished sentence of at most `budget` tokens."""
        self.segments.append(Segment(budget=budget, cite_ids=frozenset(cite_ids),
                                     forbidden=tuple(f.lower() for f in forbidden if f)))
        return self

    def choice(self, budget: int, options: Iterable[str], separator: str = ", ", lead: str = "",
               end: str = ".") -> ReasoningPlan:
        """A slot that names whole phrases only: `lead`, one or more distinct `options` joined
        by `separator`, then `end`. The model picks which options and in which order."""
        opts = tuple(dict.fromkeys(o for o in options if o))
        if not opts:
            raise ValueError("a choice slot needs at least one option")
        self.segments.append(Segment(budget=budget, kind="choice", options=opts, separator=separator, lead=lead,
                                     end=end))
        return self

    def citation(self, budget: int, cite_ids: Iterable[int]) -> ReasoningPlan:
        """A citation slot after forced "[E": the model picks ids among `cite_ids`, then "]"."""
        self.segments.append(Segment(budget=budget, cite_ids=frozenset(cite_ids), kind="citation"))
        return self


class ReasoningConstraint:
    """Masks a score vector so the generated ids follow a `ReasoningPlan` (see module doc).

    `encode(text) -> ids` tokenises forced text (no special tokens); `eos_id` ends the plan.
    Call it as `scores = constraint(input_ids, scores)`: `input_ids` are all ids so far (a
    prompt may precede them: the length at the first call is taken as the prompt's), and
    `scores` is the (V,) next-token score vector; the returned vector has -inf where a
    token is not allowed. `tokens_needed()` is the plan's worst-case token count.
    """

    def __init__(self, plan: ReasoningPlan, facts: FactVocabulary, vocab: Sequence[str],
                 encode: Callable[[str], list[int]], eos_id: int, *, banned_ids: Iterable[int] = (),
                 reserve: int = 6, top_k: int = 40):
        self.plan = plan
        self.facts = facts
        self.vocab = vocab
        self.eos_id = int(eos_id)
        self.reserve = reserve
        self.top_k = top_k
        self.banned = frozenset(int(i) for i in banned_ids) | {self.eos_id}
        self._encode = encode
        self._forced_ids: list[list[int]] = [
            (encode(s.text) if s.text else [self.eos_id]) if s.text is not None else [] for s in plan.segments]
        self.reset()

    # ------------------------------------------------------------------ state

    def reset(self) -> None:
        self._start: int | None = None
        self._seen = 0
        self._seg = 0
        self._pos = 0  # position inside a forced segment
        first = self.plan.segments[0] if self.plan.segments else None
        self._text = "[E" if first is not None and first.kind == "citation" else ""  # free text of the current slot
        self._used = 0  # tokens written in the current slot
        self.written: list[str] = []  # the free text of each finished slot

    def tokens_needed(self) -> int:
        """The most tokens the plan can take: forced ids, plus each slot's budget and its last-resort margin
        (a choice slot may have to finish its longest option, then its end, after the margin)."""
        total = 0
        for s, ids in zip(self.plan.segments, self._forced_ids):
            if s.text is not None:
                total += len(ids)
                continue
            total += s.budget + self.reserve + 1
            if s.kind == "choice":
                total += max(len(self._encode(s.separator + o + s.end)) for o in s.options) + 1
        return total

    @property
    def generated(self) -> int:
        """Tokens generated so far (scaffold included)."""
        return self._seen

    @property
    def done(self) -> bool:
        return self._seg >= len(self.plan.segments)

    def _segment(self) -> Segment | None:
        return self.plan.segments[self._seg] if not self.done else None

    def _next_forced_first(self) -> int | None:
        nxt = self._seg + 1
        if nxt < len(self.plan.segments) and self._forced_ids[nxt]:
            return self._forced_ids[nxt][0]
        return self.eos_id if nxt >= len(self.plan.segments) else None

    def _advance_segment(self) -> None:
        self._seg += 1
        self._pos = 0
        self._used = 0
        seg = self._segment()
        self._text = "[E" if seg is not None and seg.kind == "citation" else ""
        # Empty forced segments (no text) are skipped.
        while not self.done and self.plan.segments[self._seg].text is not None and not self._forced_ids[self._seg]:
            self._seg += 1

    def _consume(self, token: int) -> None:
        seg = self._segment()
        if seg is None:
            return
        if seg.text is not None:
            self._pos += 1
            if self._pos >= len(self._forced_ids[self._seg]):
                self._advance_segment()
            return
        if token == self._next_forced_first() and self.slot_complete(self._text, seg):
            self.written.append(self._text)
            self._advance_segment()
            self._consume(token)
            return
        self._text += self.vocab[token] if 0 <= token < len(self.vocab) else ""
        self._used += 1

    def _sync(self, input_ids: Sequence[int]) -> None:
        n = len(input_ids)
        if self._start is None or n < self._start + self._seen:
            self.reset()
            self._start = n
        for token in list(input_ids[self._start + self._seen:]):
            self._consume(int(token))
            self._seen += 1

    # ------------------------------------------------------------------ rules

    def slot_complete(self, text: str, seg: Segment) -> bool:
        """The slot may end here: a finished sentence, or (citation slot) a closed citation."""
        if seg.kind == "citation":
            return text.endswith("]") and _CITATION.fullmatch(text) is not None
        if seg.kind == "choice":
            return choice_state(text, seg) == "complete"
        return self.sentence_complete(text)

    def sentence_complete(self, text: str) -> bool:
        """The slot's text is a finished sentence: closing punctuation, no open citation or number."""
        if not re.search(r"[A-Za-z\u4e00-\u9fff]", text) or not _SENTENCE_END.search(text) or _OPEN_CITATION.search(text):
            return False
        if text.count("(") + text.count("（") != text.count(")") + text.count("）"):
            return False  # a parenthesis left open is not a finished sentence
        stripped = text.rstrip()[:-1]
        m = re.search(r"(?<![A-Za-z0-9])(?<!\d\.)(\d+(?:\.\d+)?)$", stripped)
        return m is None or m.group(1) in self.facts.numbers

    def allowed(self, text: str, token: int, seg: Segment, closing: bool) -> bool:
        """Whether `token` may follow the slot's `text` (the rules of the module doc)."""
        if token in self.banned or not 0 <= token < len(self.vocab):
            return False
        piece = self.vocab[token]
        if not piece or "<" in piece or ">" in piece or any(ord(c) < 32 for c in piece):
            return False  # no tag, newline or control character inside a slot
        new = text + piece
        lo = len(text)
        if seg.kind == "choice":
            # Whole options only; when closing, no new option is started.
            return any(rest.startswith(piece) for rest in self._continuations(text, seg, not closing))
        if seg.kind == "citation":
            # Ids, separators and the closing bracket only; nothing after it.
            if not _CITATION_SLOT.fullmatch(new) or not self._citations_ok(new, lo, seg):
                return False
            if closing and not new.endswith("]"):
                # Closing: only finish the id being written (no new id), then close the bracket.
                last = re.search(r"E(\d*)$", new)
                return last is not None and last.group(1) not in {str(i) for i in seg.cite_ids}
            return True
        if not self._citations_ok(new, lo, seg):
            return False
        glued = re.search(r"([A-Za-z]+)(\d+)$", text + re.match(r"\d*", piece).group(0)) if piece[:1].isdigit() else None
        if glued and not glued.group(1).endswith(("V", "E")):
            word = glued.group(0).lower()
            if not any(term.startswith(word) or word.startswith(term) for term in _ALNUM_TERMS):
                return False  # "troponin5": a number glued to a word escapes the number rule
        if new.count(")") > new.count("(") or "()" in new.replace(" ", ""):
            return False  # a parenthesis closed that was never opened, or an empty one
        if not self._numbers_ok(new, lo):
            return False
        if not self._leads_ok(new, lo):
            return False
        if seg.forbidden and self._forbidden_hit(new.lower(), lo, seg.forbidden):
            return False
        if closing:
            # Only moves that finish what is open (citation, number, parenthesis), then the sentence.
            if _OPEN_CITATION.search(text) or re.search(r"\d\.?$", text):
                return bool(re.fullmatch(r"[\d\],. E)]*[.!?]?\s*", piece))
            word = re.search(r"[A-Za-z]+$", text)
            if re.match(r"[a-z]+$", piece) and word and len(word.group(0)) + len(piece) <= 12:
                return True  # finish the word being written ("absen" -> "absent") before the end
            if text.count("(") > text.count(")"):
                return bool(re.fullmatch(r"\s*\)+[.!?,;]?\s*", piece))
            return bool(_SENTENCE_END.search(new)) and self.sentence_complete(new)
        return True

    @staticmethod
    def _forbidden_hit(low: str, lo: int, phrases: tuple[str, ...]) -> bool:
        """A forbidden phrase completed by the new piece, as a word ("af" is not in "after").

        A short phrase (under 5 characters) at the very end may still become a longer
        word, so it counts only once a non-letter follows; a longer one counts at once.
        """
        squeezed, squeezed_before = low.replace(" ", ""), low[:lo].replace(" ", "")
        for phrase in phrases:
            glued = phrase.replace(" ", "")
            if glued != phrase and squeezed.count(glued) > squeezed_before.count(glued):
                return True  # written without its spaces ("measureditem") to slip past the rule
            start = max(0, lo - len(phrase))
            for m in re.finditer(r"(?<![a-z])" + re.escape(phrase), low[start:]):
                end = start + m.end()
                if end < len(low):
                    if not low[end].isalpha():
                        return True
                elif len(phrase) >= 5 or not phrase[-1].isalpha():
                    return True
        return False

    def _citations_ok(self, new: str, lo: int, seg: Segment) -> bool:
        if "[" not in new and "]" not in new:
            return True
        # Every bracket closed but at most one, which is the open citation at the end.
        rest = _CITATION.sub("", new)
        if "]" in rest or rest.count("[") > 1 or ("[" in rest and not _OPEN_CITATION.search(rest)):
            return False
        for m in _CITATION.finditer(new):
            if m.end() <= lo:
                continue
            body = _CITATION_BODY.fullmatch(m.group(1).strip())
            if body is None:
                return False
            ids = [int(x) for x in re.findall(r"E(\d+)", m.group(1))]
            if not ids or any(i not in seg.cite_ids for i in ids) or len(set(ids)) < len(ids):
                return False  # an id outside the slot's evidence, or one cited twice
        m = _OPEN_CITATION.search(new)
        if m is not None:
            body = m.group(1)
            if not seg.cite_ids or not _CITATION_PREFIX.fullmatch(body):
                return False
            ids = re.findall(r"E(\d+)", body)
            if len(set(ids)) < len(ids) or (body.rstrip().endswith(",") and len(set(ids)) >= len(seg.cite_ids)):
                return False  # an id twice, or a separator with no unused id left to cite
            tail = re.search(r"E(\d*)$", body)
            if tail is not None:
                # The id being written must be able to end as one not cited yet (", E" is one
                # token in some vocabularies, so the separator rule alone does not catch it).
                done = {int(x) for x in re.findall(r"E(\d+)\s*,", body)}
                if not any(str(i).startswith(tail.group(1)) for i in seg.cite_ids if i not in done):
                    return False
            if ids:
                *whole, last = ids
                if any(int(i) not in seg.cite_ids for i in whole):
                    return False
                if not body.endswith(last) and int(last) not in seg.cite_ids:
                    return False
                if body.endswith(last) and not any(str(i).startswith(last) for i in seg.cite_ids):
                    return False
        return True

    def _numbers_ok(self, new: str, lo: int) -> bool:
        masked = _CITATION.sub(lambda m: " " * len(m.group(0)), new)
        open_cite = _OPEN_CITATION.search(masked)
        if open_cite is not None:
            masked = masked[:open_cite.start()] + " " * (len(masked) - open_cite.start())
        for m in _NUMBER.finditer(masked):
            if m.end() < lo - 1:
                continue  # decided before this piece ("4." is still open until the next one)
            end = m.end()
            at_end = end == len(masked)
            dot_end = masked[end:] == "." and end + 1 == len(masked)
            if at_end or dot_end:
                if not self.facts.number_ok(m.group(0) + ("." if dot_end else ""), open_end=True):
                    return False
            elif not self.facts.number_ok(m.group(0), open_end=False):
                return False
        return True

    def _leads_ok(self, new: str, lo: int) -> bool:
        for m in _LEAD.finditer(new):
            if m.end() < lo or m.end() == len(new):
                continue  # a lead at the very end may still grow ("V1" -> "V12")
            if m.group(1) not in self.facts.leads:
                return False
        m = _OPEN_V_LEAD.search(new)
        if m is not None and m.end() > lo:
            return any(lead.startswith(m.group(0)) for lead in self.facts.leads)
        return True

    # ------------------------------------------------------------------ the processor

    def __call__(self, input_ids: Sequence[int], scores: np.ndarray) -> np.ndarray:
        self._sync(input_ids)
        out = np.full_like(scores, _NEG_INF)
        seg = self._segment()
        if seg is None:
            out[self.eos_id] = 0.0
            return out
        if seg.text is not None:
            forced = self._forced_ids[self._seg][self._pos]
            out[forced] = scores[forced] if np.isfinite(scores[forced]) else 0.0
            return out
        end_token = self._next_forced_first()
        complete = self.slot_complete(self._text, seg)
        if complete and (self._used >= seg.budget - self.reserve or self._used >= seg.budget):
            out[end_token] = 0.0
            return out
        closing = self._used >= seg.budget - self.reserve
        if self._used >= seg.budget + self.reserve:
            # A last resort that keeps the plan's token count: finish what is open, end here.
            out[end_token if complete else self._completion_token(seg)] = 0.0
            return out
        if complete and end_token is not None:
            out[end_token] = scores[end_token] if np.isfinite(scores[end_token]) else 0.0
        kept = 0
        if seg.kind == "choice":
            # Few tokens continue a choice: every vocabulary piece that is a prefix of what
            # may come next is a candidate, so the model's preference among them decides.
            order = np.array(sorted(self._choice_candidates(seg, closing), key=lambda t: -scores[t]), dtype=np.int64)
        elif scores.shape[0] > 512:
            # The best 512 candidates sorted; a full sort only when none of them is valid.
            head = np.argpartition(-scores, 512)[:512]
            order = head[np.argsort(-scores[head], kind="stable")]
        else:
            order = np.argsort(-scores, kind="stable")
        for token in order:
            token = int(token)
            if not np.isfinite(scores[token]):
                break
            if token == end_token:
                continue
            if self.allowed(self._text, token, seg, closing):
                out[token] = scores[token]
                kept += 1
                if kept >= self.top_k and seg.kind != "choice":
                    break
        if kept == 0 and not (complete and end_token is not None):
            fallback = self._fallback(seg)
            out[fallback] = 0.0
        return out

    def _fallback(self, seg: Segment) -> int:
        """A token that always moves towards a finished slot when no candidate was valid."""
        return self._completion_token(seg)

    def _continuations(self, text: str, seg: Segment, more: bool) -> list[str]:
        """`choice_continuations`, memoised for the step (every candidate asks the same)."""
        key = (self._seg, text, more)
        cached = self.__dict__.get("_cont_memo")
        if cached is None or cached[0] != key:
            cached = self._cont_memo = (key, choice_continuations(text, seg, more=more))
        return cached[1]

    def _choice_candidates(self, seg: Segment, closing: bool) -> set[int]:
        """Token ids whose text is a prefix of a continuation of the choice slot's text."""
        by_text = _pieces_by_text(self.vocab)
        out: set[int] = set()
        for rest in self._continuations(self._text, seg, not closing):
            for n in range(1, min(len(rest), _MAX_PIECE) + 1):
                out.update(by_text.get(rest[:n], ()))
        return out

    def _completion(self, seg: Segment) -> str:
        """The shortest text that closes what the slot has open and finishes it."""
        if seg.kind == "choice":
            ways = [r for more in (False, True) for r in choice_continuations(self._text, seg, more=more)
                    if choice_state(self._text + r, seg) == "complete"]
            return min(ways, key=len) if ways else seg.end
        text, ids = self._text, sorted(seg.cite_ids)
        out = ""
        m = _OPEN_CITATION.search(text)
        if m is not None:
            body = m.group(1)
            last = re.search(r"E(\d*)$", body)
            # Ids already complete in this citation are not offered again ("[E2, E2]").
            done = {int(x) for x in re.findall(r"E(\d+)\s*,", body)}
            unused = [i for i in ids if i not in done] or ids
            if body.rstrip().endswith(",") or not body:
                out += ("" if body.endswith(" ") or not body else " ") + f"E{unused[0] if unused else 1}]"
            elif last is not None:
                digits = last.group(1)
                match = next((str(i) for i in unused if str(i).startswith(digits)), None)
                out += (match[len(digits):] if match else "") + "]"
            else:
                out += "]"
        else:
            num = re.search(r"(?<![A-Za-z0-9])(?<!\d\.)(\d+(?:\.\d*)?)$", text)
            if num is not None and num.group(1) not in self.facts.numbers:
                value = next((v for v in sorted(self.facts.numbers) if v.startswith(num.group(1))), None)
                out += value[len(num.group(1)):] if value else ""
            if text.count("(") > text.count(")"):
                out += ")" * (text.count("(") - text.count(")"))
        if seg.kind == "sentence" and not _SENTENCE_END.search(text + out):
            out += "." if re.search(r"[A-Za-z]", text + out) else " Noted."
        return out

    def _completion_token(self, seg: Segment) -> int:
        ids = self._encode(self._completion(seg) or ".")
        return ids[0] if ids else self.eos_id

    def _ids_of(self, piece: str) -> list[int]:
        cache = self.__dict__.setdefault("_piece_ids", {})
        if piece not in cache:
            cache[piece] = [i for i, t in enumerate(self.vocab) if t == piece]
        return cache[piece]


# --------------------------------------------------------------------------- choice slots

_MAX_PIECE = 48  # characters; longer than any vocabulary piece a continuation could match
_PIECES: dict[int, tuple[Sequence[str], dict[str, list[int]]]] = {}


def _pieces_by_text(vocab: Sequence[str]) -> dict[str, list[int]]:
    """text -> token ids with that text, built once per vocabulary (kept alive with it)."""
    cached = _PIECES.get(id(vocab))
    if cached is None or cached[0] is not vocab:
        table: dict[str, list[int]] = {}
        for i, piece in enumerate(vocab):
            if piece:
                table.setdefault(piece, []).append(i)
        cached = _PIECES[id(vocab)] = (vocab, table)
    return cached[1]


def choice_state(text: str, seg: Segment) -> str | None:
    """Where `text` stands in the language `lead opt (separator opt)* end` of a choice slot:
    "complete" (a whole sentence of it), "open" (a proper prefix of one) or None (neither)."""
    if not text.startswith(seg.lead):
        return "open" if seg.lead.startswith(text) else None
    return _choice_rest(text[len(seg.lead):], seg, frozenset())


def _choice_rest(rest: str, seg: Segment, used: frozenset[str]) -> str | None:
    if not rest:
        return "open"
    best: str | None = None
    for option in seg.options:
        if option in used:
            continue
        if len(rest) <= len(option):
            if option.startswith(rest):
                best = "open"
            continue
        if not rest.startswith(option):
            continue
        after = rest[len(option):]
        if after == seg.end:
            return "complete"
        if seg.end.startswith(after):
            best = "open"
        if not any(o not in used and o != option for o in seg.options):
            continue
        if seg.separator.startswith(after):
            best = "open"
        elif after.startswith(seg.separator):
            state = _choice_rest(after[len(seg.separator):], seg, used | {option})
            if state == "complete":
                return state
            best = best or state
    return best


def choice_continuations(text: str, seg: Segment, more: bool = True) -> list[str]:
    """Strings that may follow `text` (a prefix of the choice language): the rest of the
    option being written and the end, or (with `more`) a separator and a next option.
    With `more=False` no new separator is started (the slot is closing); one already
    begun is finished with the shortest way on."""
    if not text.startswith(seg.lead):
        return [seg.lead[len(text):] + o for o in seg.options] if seg.lead.startswith(text) else []
    out: list[str] = []

    def nexts(tail: str, used: frozenset[str]) -> None:
        """After `tail` closes an option: the end, or a separator and another option."""
        out.append(tail + seg.end)
        if more:
            for o in seg.options:
                if o not in used:
                    out.extend((tail + seg.separator + o + seg.end, tail + seg.separator + o + seg.separator))

    def walk(rest: str, used: frozenset[str]) -> None:
        for option in seg.options:
            if option in used:
                continue
            if len(rest) <= len(option):
                if option.startswith(rest):
                    nexts(option[len(rest):], used | {option})
                continue
            if not rest.startswith(option):
                continue
            after = rest[len(option):]
            if seg.end.startswith(after):
                out.append(seg.end[len(after):])
            left = [o for o in seg.options if o not in used and o != option]
            if not left:
                continue
            if seg.separator.startswith(after) and (after or more):
                # A separator begun (or, with `more`, one to begin): finish it, then an option.
                for o in left:
                    out.append(seg.separator[len(after):] + o + seg.end)
                    if more:
                        out.append(seg.separator[len(after):] + o + seg.separator)
            elif after.startswith(seg.separator):
                walk(after[len(seg.separator):], used | {option})

    walk(text[len(seg.lead):], frozenset())
    return [r for r in dict.fromkeys(out) if r]


class HFReasoningProcessor:
    """A transformers `LogitsProcessor`: one `ReasoningConstraint` per batch row.

    Rows without a constraint (None) are left as they are. Scores are converted to numpy
    row by row; the cost is one (V,) copy per row and step.
    """

    def __init__(self, constraints: Sequence[ReasoningConstraint | None]):
        self.constraints = list(constraints)

    def __call__(self, input_ids, scores):
        import torch

        out = scores.clone()
        ids = input_ids.tolist()
        for b, constraint in enumerate(self.constraints):
            if constraint is None:
                continue
            row = scores[b].detach().float().cpu().numpy()
            masked = constraint(ids[b], row)
            out[b] = torch.from_numpy(masked).to(scores.device, scores.dtype)
        return out
