"""Greedy decoding of medfuse's language model with llama.cpp (llama-cpp-python, low-level API).

torch stays the training path and the fallback; this is the fast inference path. The
backbone (LoRA merged, placeholder tokens added) is exported once to GGUF
(`medfuse.model.gguf_export`), and the prompt goes in as EMBEDDINGS, not tokens: torch
builds each prompt's rows exactly as `MedfuseLM.build_inputs` does (token embeddings with
the projected fused modality vectors spliced in at the placeholders) and llama.cpp takes
them as `llama_batch.embd` batches. Generated tokens then go in as ordinary token batches.

Prefix KV cache: the leading rows every prompt shares (the system prompt and the fixed
opening of the user turn) are evaluated once into sequence 0 and reused: each case's
sequence gets them with `llama_memory_seq_cp` (a unified KV cache, so the copy only tags
cells; nothing is recomputed). The cache is keyed by the rows themselves: a later call
reuses the longest run of leading rows equal to the cached ones and trims the rest, so it
converges on what is really shared and can never serve KV computed from other inputs.

Cohorts decode together: up to `n_seq_max - 1` cases per `llama_decode`, each in its own
sequence with its own positions (no padding), one token per unfinished case per step, plus
the run of tokens a logits processor forces after it (diagnose's scaffold: headers, closing
tags), which is drafted by asking the processor and re-checked against the real logits, so
a scaffold of n tokens costs one call instead of n (`generate_embeds`, `draft_forced`).

    decoder = LlamaCppDecoder.for_model(model)     # MedFuse or MedfuseLM; exports the GGUF once
    texts = decoder.generate(prompts, fused.output, max_new_tokens=128)

Greedy only (diagnosis decodes greedily); sampling for GRPO stays in torch.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medfuse.errors import ConfigError, InputError

__all__ = ["BACKENDS", "DECODER_ENV", "DecodeStats", "LlamaCppDecoder", "LogitsProcessor", "decoder_for",
           "generate_with_backend", "llamacpp_available", "prefer_passive_openmp_wait", "resolve_backend"]

LogitsProcessor = Callable[[list[int], np.ndarray], np.ndarray]
"""`(generated ids so far, scores (V,) float32) -> scores`: may mask or reweight the next-token
scores of one sequence (llama-cpp-python's own processor shape, without the prompt ids:
the prompt is embeddings, it has no ids). It may be called more than once with the same ids
(probe scores, when forced tokens are drafted) and, before the ids are re-checked, once with
none: its answer must follow from the ids it is given (`ReasoningConstraint` restarts on an
empty list and re-reads the ids of the next call)."""


def prefer_passive_openmp_wait() -> None:
    """Make OpenMP threads sleep, not spin, while they wait (unless `OMP_WAIT_POLICY` is set).

    Effective only before the first libgomp user loads: llama.cpp links `libgomp.so.1` and
    so shares torch's copy, which reads the policy once; call it first thing in a process
    (the CLI entry point), before torch is imported. Spinning threads stall whenever
    another process holds a core: measured on this project's shared 2-core machine (load
    ~7), SmolLM2-135M q8_0 decoded at 0.7 tokens/s with 2 spinning threads, 12.8 with 1
    thread, 22.8 with 2 passive threads.
    """
    if "torch" not in sys.modules and "llama_cpp" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def llamacpp_available() -> bool:
    """Whether llama-cpp-python is installed (without importing it)."""
    return importlib.util.find_spec("llama_cpp") is not None


@dataclass
class DecodeStats:
    """What the last `generate_ids` call did (for benchmarks and tests)."""

    sequences: int = 0
    prefix_reused: int = 0  # rows the last group took from the prefix KV cache left by earlier calls
    prefix_evaluated: int = 0  # rows evaluated into the prefix cache (shared by a group's cases) by this call
    prompt_rows: list[int] = field(default_factory=list)  # rows of each prompt
    new_tokens: list[int] = field(default_factory=list)  # tokens generated per sequence
    prefill_s: float = 0.0  # wall time evaluating prompt rows (prefix cache included)
    decode_s: float = 0.0  # wall time after the prefill: llama_decode calls and the Python between them
    decode_llama_s: float = 0.0  # the part of decode_s spent inside llama_decode
    decode_steps: int = 0  # llama_decode calls after the prefill (each feeds every unfinished sequence)
    fed_tokens: int = 0  # token rows those calls evaluated (drafted ones included)
    drafted: int = 0  # forced tokens appended ahead of their logits (see `generate_embeds`)
    draft_accepted: int = 0  # drafted tokens the real logits confirmed (the rest were rolled back)


class LlamaCppDecoder:
    """A llama.cpp context over one exported GGUF, decoding prompts given as embedding rows.

    `lm` (a `MedfuseLM`) is needed by `generate`/`generate_ids`, which build the rows from
    prompt texts and fused tokens; `generate_embeds` takes rows directly. `n_threads`: the
    CPU threads of llama.cpp (2: this project's machines). `n_ctx`: KV cells shared by the
    prefix and every sequence of a cohort step; `n_seq_max`: sequence 0 holds the prefix,
    so `n_seq_max - 1` cases decode at once. `flash_attn`: None lets llama.cpp decide (it
    enables flash attention on CPU); measured here it halves a cohort's prefill, where
    the unified cache makes every row attend over all sequences' cells (masked).
    """

    def __init__(self, gguf_path: str | Path, lm: nn.Module | None = None, *, n_threads: int = 2,
                 n_ctx: int = 8192, n_seq_max: int = 9, n_batch: int = 2048, flash_attn: bool | None = None,
                 verbose: bool = False):
        prefer_passive_openmp_wait()
        import llama_cpp

        self._llama = llama_cpp
        if not verbose:
            # llama-cpp-python routes llama.cpp's log through this logger; INFO floods stderr.
            logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
        self.gguf_path = Path(gguf_path)
        if not self.gguf_path.is_file():
            raise InputError(self.gguf_path, "no such GGUF file")
        self.lm = lm
        self.n_threads = n_threads
        llama_cpp.llama_backend_init()
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = 0
        self._model = llama_cpp.llama_model_load_from_file(str(self.gguf_path).encode(), mparams)
        if not self._model:
            raise InputError(self.gguf_path, "llama.cpp cannot load this GGUF file")
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = n_batch
        cparams.n_ubatch = min(n_batch, 512)
        cparams.n_seq_max = n_seq_max
        cparams.n_threads = n_threads
        cparams.n_threads_batch = n_threads
        cparams.no_perf = True
        if flash_attn is not None:
            cparams.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn
                                       else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        # One KV buffer for all sequences: copying the prefix to a case only tags its cells.
        cparams.kv_unified = True
        self._ctx = llama_cpp.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            llama_cpp.llama_model_free(self._model)
            raise InputError(self.gguf_path, "llama.cpp cannot create a context for this model")
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self.n_ctx = int(llama_cpp.llama_n_ctx(self._ctx))
        self.n_batch = int(llama_cpp.llama_n_batch(self._ctx))
        self.n_seq_max = n_seq_max
        self.n_embd = int(llama_cpp.llama_model_n_embd(self._model))
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self._model)))
        self._embd_batch = llama_cpp.llama_batch_init(self.n_batch, self.n_embd, 1)
        self._token_batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._prefix = np.zeros((0, self.n_embd), dtype=np.float32)  # rows held by sequence 0
        self._llama_s = 0.0  # wall time inside llama_decode since the decoder opened
        self.draft_forced = True  # see `generate_embeds`; benchmarks switch it off to compare
        self.stats = DecodeStats()

    # ------------------------------------------------------------------ constructors

    @classmethod
    def for_model(cls, model_or_lm: nn.Module, *, out_type: str = "q8_0", **kwargs: Any) -> LlamaCppDecoder:
        """Export (or reuse the cached export of) a `MedFuse`/`MedfuseLM` and open it."""
        from medfuse.model.gguf_export import _medfuse_lm, export_gguf

        lm = _medfuse_lm(model_or_lm)
        return cls(export_gguf(lm, out_type=out_type), lm, **kwargs)

    def close(self) -> None:
        """Free the llama.cpp context and model (also done when the decoder is collected)."""
        llama = getattr(self, "_llama", None)
        if llama is None:
            return
        for batch in (getattr(self, "_embd_batch", None), getattr(self, "_token_batch", None)):
            if batch is not None:
                llama.llama_batch_free(batch)
        if getattr(self, "_ctx", None):
            llama.llama_free(self._ctx)
        if getattr(self, "_model", None):
            llama.llama_model_free(self._model)
        self._llama = None

    def __del__(self) -> None:
        try:
            self.close()
        except (TypeError, AttributeError):  # interpreter shutdown: the bindings may already be gone
            return

    # ------------------------------------------------------------------ prompts -> rows

    @torch.no_grad()
    def prompt_rows(self, prompts: Sequence[str], fused: Any | None = None) -> list[np.ndarray]:
        """Each prompt's embedding rows (T_i, H) float32, padding removed: `MedfuseLM.build_inputs`."""
        if self.lm is None:
            raise ValueError("this decoder has no MedfuseLM: pass rows to generate_embeds")
        embeds, mask = self.lm.build_inputs(list(prompts), fused)  # (B, T, H), (B, T)
        embeds = embeds.float().cpu().numpy()
        keep = mask.bool().cpu().numpy()
        return [np.ascontiguousarray(embeds[b][keep[b]]) for b in range(len(prompts))]

    def generate_ids(self, prompts: Sequence[str], fused: Any | None = None, max_new_tokens: int = 128,
                     **kwargs: Any) -> list[list[int]]:
        """`MedfuseLM.generate_ids` on llama.cpp: greedy new token ids per prompt (EOS kept).

        Keyword arguments are those of `generate_embeds`; `suppress_tokens` defaults to the
        placeholder ids and `eos_token_id` to the tokenizer's, as in the torch path.
        """
        if self.lm is not None:
            kwargs.setdefault("suppress_tokens", list(self.lm.placeholder_ids.values()))
            kwargs.setdefault("eos_token_id", self.lm.tokenizer.eos_token_id)
            if kwargs.get("stop_strings"):
                kwargs.setdefault("decode", lambda ids: self.lm.tokenizer.decode(ids, skip_special_tokens=False))
        return self.generate_embeds(self.prompt_rows(prompts, fused), max_new_tokens=max_new_tokens, **kwargs)

    def generate(self, prompts: Sequence[str], fused: Any | None = None, max_new_tokens: int = 128,
                 **kwargs: Any) -> list[str]:
        """`MedfuseLM.generate` on llama.cpp: the decoded new text per prompt, special tokens removed."""
        ids = self.generate_ids(prompts, fused, max_new_tokens=max_new_tokens, **kwargs)
        return self.lm.tokenizer.batch_decode(ids, skip_special_tokens=True)

    # ------------------------------------------------------------------ decoding

    def generate_embeds(
        self,
        rows: Sequence[np.ndarray],
        *,
        max_new_tokens: int = 128,
        eos_token_id: int | Sequence[int] | None = None,
        suppress_tokens: Sequence[int] = (),
        logits_processor: LogitsProcessor | Sequence[LogitsProcessor | None] | None = None,
        stop_strings: Sequence[str] = (),
        decode: Callable[[list[int]], str] | None = None,
        min_new_tokens: int = 0,
        use_prefix_cache: bool = True,
        draft_forced: bool | None = None,
    ) -> list[list[int]]:
        """Greedy continuation of each prompt given as embedding rows (T_i, H).

        A sequence stops after an EOS id (kept in its output), when `decode` of its last
        tokens contains one of `stop_strings` (e.g. "</answer>"), or at `max_new_tokens`.
        `suppress_tokens` are never chosen; `logits_processor` (one for all, or one per
        prompt) sees each sequence's generated ids and next-token scores and returns the
        scores to take the argmax of. `min_new_tokens` masks EOS before that many tokens
        (benchmarks force a length with it). Cohorts larger than `n_seq_max - 1` run in
        consecutive groups.

        `draft_forced` (default: the decoder's attribute of that name, True): runs of tokens
        a logits processor forces (diagnose's scaffold: "<think>", "Heart failure:", the
        closing tags) go into ONE llama_decode call instead of one call each. After each picked token the processor is asked, with two probe
        score vectors, which token comes next; when both probes give the same single
        allowed token it is appended as a draft, and so on. The real logits of every drafted
        position then re-run the ordinary greedy pick: a draft is kept only where that pick
        equals it, otherwise its KV cells are removed and decoding goes on from the real
        pick, so the tokens are exactly those of one-call-per-token decoding. A processor is
        therefore called again with the same ids, with probe scores, and, before the
        re-check, once with no ids (a stateful one such as `ReasoningConstraint` then starts
        over and re-reads the ids of the next call).
        """
        if not rows:
            return []
        if any(r.ndim != 2 or r.shape[1] != self.n_embd or r.shape[0] == 0 for r in rows):
            raise ValueError(f"every prompt needs (T >= 1, {self.n_embd}) embedding rows")
        processors = (list(logits_processor) if isinstance(logits_processor, Sequence)
                      else [logits_processor] * len(rows))
        if len(processors) != len(rows):
            raise ValueError(f"{len(rows)} prompts but {len(processors)} logits processors")
        eos = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id or ())
        if stop_strings and decode is None:
            raise ValueError("stop_strings need a decode function")
        settings = _Settings(max_new_tokens, eos, np.asarray(sorted(set(suppress_tokens)), dtype=np.int64),
                             tuple(stop_strings), decode, min_new_tokens, use_prefix_cache,
                             self.draft_forced if draft_forced is None else draft_forced)
        self.stats = DecodeStats()
        out: list[list[int]] = []
        for group in self._groups(rows, max_new_tokens):
            out.extend(self._decode_group([np.ascontiguousarray(rows[i], dtype=np.float32) for i in group],
                                          [processors[i] for i in group], settings))
        return out

    def _groups(self, rows: Sequence[np.ndarray], max_new_tokens: int) -> list[list[int]]:
        """Consecutive cohorts that fit the sequence slots and the KV cells."""
        groups: list[list[int]] = [[]]
        cells = 0
        for i, r in enumerate(rows):
            need = r.shape[0] + max_new_tokens
            if need + self._prefix.shape[0] > self.n_ctx:
                raise ValueError(f"prompt {i} needs {need} positions; the llama.cpp context holds {self.n_ctx}")
            if groups[-1] and (len(groups[-1]) >= self.n_seq_max - 1 or cells + need + self._prefix.shape[0] > self.n_ctx):
                groups.append([])
                cells = 0
            groups[-1].append(i)
            cells += need
        return groups

    def _decode_group(self, rows: list[np.ndarray], processors: list[LogitsProcessor | None],
                      settings: _Settings) -> list[list[int]]:
        llama = self._llama
        seqs = list(range(1, len(rows) + 1))
        for s in seqs:
            llama.llama_memory_seq_rm(self._memory, s, -1, -1)
        started = time.perf_counter()
        shared = self._use_prefix(rows) if settings.use_prefix_cache else self._drop_prefix()
        self.stats.sequences += len(rows)
        self.stats.prompt_rows.extend(r.shape[0] for r in rows)
        for s in seqs:
            if shared:
                llama.llama_memory_seq_cp(self._memory, 0, s, 0, shared)

        # Prefill: every case's own rows, packed into embedding batches; logits only at each case's end.
        items = [(s, pos, r[pos]) for s, r in zip(seqs, rows) for pos in range(shared, r.shape[0])]
        last = {s: r.shape[0] - 1 for s, r in zip(seqs, rows)}
        scores: dict[int, np.ndarray] = {}
        for start in range(0, len(items), self.n_batch):
            chunk = items[start:start + self.n_batch]
            flags = [pos == last[s] for s, pos, _ in chunk]
            self._decode_embd(chunk, flags)
            # A later chunk overwrites the logits buffer: read each case's now.
            scores.update({s: self._logits(j) for j, (s, _, _) in enumerate(chunk) if flags[j]})

        prefilled = time.perf_counter()
        self.stats.prefill_s += prefilled - started
        llama_before = self._llama_s
        generated: dict[int, list[int]] = {s: [] for s in seqs}
        position = {s: r.shape[0] for s, r in zip(seqs, rows)}  # where each sequence's next fed token goes
        # Picked but not yet fed (its logits are unknown): one per unfinished sequence.
        pending: dict[int, int] = {}
        # The scores each pending token was picked from: the probes' ranking when drafting after it.
        hints: dict[int, np.ndarray] = scores
        for s in seqs:
            token = self._pick(scores[s], generated[s], processors[s - 1], settings)
            generated[s].append(token)
            if not self._finished(generated[s], settings):
                pending[s] = token
        # Room in one token batch for every pending token and its drafts.
        max_draft = max(0, min(_MAX_DRAFT, self.n_batch // max(1, len(seqs)) - 1)) if settings.draft_forced else 0
        while pending:
            drafts = {s: self._draft(generated[s], processors[s - 1], settings, max_draft, hints[s]) for s in pending}
            batch = [(s, token, position[s] + k) for s, first in pending.items()
                     for k, token in enumerate([first, *drafts[s]])]
            self._decode_tokens(batch)
            self.stats.decode_steps += 1
            self.stats.fed_tokens += len(batch)
            following: dict[int, int] = {}
            hints = {}
            index = 0  # batch position of the sequence's pending token
            for s in pending:
                draft, processor = drafts[s], processors[s - 1]
                if draft:
                    _restart(processor, self.n_vocab)  # the probes ran it ahead of the checked ids
                kept = 0
                while True:
                    # The greedy pick from the real logits after the pending token and `kept` drafts.
                    hints[s] = self._logits(index + kept)
                    token = self._pick(hints[s], generated[s], processor, settings)
                    generated[s].append(token)
                    if self._finished(generated[s], settings) or kept >= len(draft) or token != draft[kept]:
                        break
                    kept += 1
                self.stats.drafted += len(draft)
                self.stats.draft_accepted += kept
                index += 1 + len(draft)
                if self._finished(generated[s], settings):
                    continue
                if kept < len(draft):
                    # A rejected draft: its cells (and those after it) leave the cache.
                    llama.llama_memory_seq_rm(self._memory, s, position[s] + 1 + kept, -1)
                position[s] += 1 + kept
                following[s] = token
            pending = following
        self.stats.decode_s += time.perf_counter() - prefilled
        self.stats.decode_llama_s += self._llama_s - llama_before
        for s in seqs:
            llama.llama_memory_seq_rm(self._memory, s, -1, -1)
        self.stats.new_tokens.extend(len(generated[s]) for s in seqs)
        return [generated[s] for s in seqs]

    def _draft(self, generated: list[int], processor: LogitsProcessor | None, settings: _Settings,
               limit: int, hint: np.ndarray) -> list[int]:
        """The tokens `processor` forces after `generated`, whatever the scores (see `generate_embeds`).

        Stops before a token that would end the sequence (it is picked from real logits),
        and so that every drafted token's logits are still needed (token budget). `hint`:
        the scores the last token was picked from, the probes' ranking.
        """
        if processor is None or limit <= 0:
            return []
        ids = list(generated)
        draft: list[int] = []
        limit = min(limit, settings.max_new_tokens - len(generated) - 1)
        while len(draft) < limit:
            token = self._forced(ids, processor, settings, hint)
            if token is None:
                break
            ids.append(token)
            if self._finished(ids, settings):
                break
            draft.append(token)
        return draft

    def _forced(self, ids: list[int], processor: LogitsProcessor, settings: _Settings,
                hint: np.ndarray) -> int | None:
        """The one token `processor` allows after `ids` for two different score vectors, else None.

        The probes are `hint` (the last real scores: a realistic ranking, so a processor
        that chooses by score finds its usual candidates) and `hint` with the first probe's
        choice pushed to the bottom: a processor choosing by score then picks another
        token; a forced segment does not. A wrong guess is caught by the re-check against
        the real logits, so the probes decide only what is drafted, never what is output.
        """
        probe = np.array(hint, dtype=np.float32)
        self._mask(probe, len(ids), settings)
        allowed = np.flatnonzero(np.isfinite(processor(ids, probe.copy())))
        if allowed.size != 1:
            return None
        token = int(allowed[0])
        probe[token] = np.float32(-1e30)
        again = np.flatnonzero(np.isfinite(processor(ids, probe)))
        return token if again.size == 1 and int(again[0]) == token else None

    def _logits(self, index: int) -> np.ndarray:
        """A copy of the next-token logits (V,) of batch position `index` of the last decode."""
        pointer = self._llama.llama_get_logits_ith(self._ctx, index)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy()

    @staticmethod
    def _mask(scores: np.ndarray, n_generated: int, settings: _Settings) -> None:
        """Suppressed tokens, and EOS before `min_new_tokens`, to -inf (in place)."""
        if settings.suppress.size:
            scores[settings.suppress] = -np.inf
        if n_generated < settings.min_new_tokens and settings.eos:
            scores[list(settings.eos)] = -np.inf

    @classmethod
    def _pick(cls, scores: np.ndarray, generated: list[int], processor: LogitsProcessor | None,
              settings: _Settings) -> int:
        cls._mask(scores, len(generated), settings)
        if processor is not None:
            scores = processor(list(generated), scores)
        return int(np.argmax(scores))

    @staticmethod
    def _finished(generated: list[int], settings: _Settings) -> bool:
        if len(generated) >= settings.max_new_tokens or generated[-1] in settings.eos:
            return True
        if settings.stop_strings:
            tail = settings.decode(generated[-16:])
            return any(stop in tail for stop in settings.stop_strings)
        return False

    # ------------------------------------------------------------------ prefix cache

    def _use_prefix(self, rows: list[np.ndarray]) -> int:
        """Make sequence 0 hold the rows all `rows` share (at most all but each one's last
        row, which must be evaluated for its logits); return how many rows that is."""
        target = min(r.shape[0] for r in rows) - 1
        first = rows[0]
        for r in rows[1:]:
            target = min(target, _common_rows(first, r, target))
        reusable = _common_rows(self._prefix, first, min(target, self._prefix.shape[0]))
        self.stats.prefix_reused = reusable
        if reusable < self._prefix.shape[0]:
            self._llama.llama_memory_seq_rm(self._memory, 0, reusable, -1)
            self._prefix = self._prefix[:reusable]
        if target > reusable:
            items = [(0, pos, first[pos]) for pos in range(reusable, target)]
            for start in range(0, len(items), self.n_batch):
                chunk = items[start:start + self.n_batch]
                self._decode_embd(chunk, [False] * len(chunk))
            self._prefix = first[:target].copy()
            self.stats.prefix_evaluated += target - reusable
        return target

    def _drop_prefix(self) -> int:
        self._llama.llama_memory_seq_rm(self._memory, 0, -1, -1)
        self._prefix = self._prefix[:0]
        return 0

    def clear_prefix_cache(self, keep_rows: int = 0) -> None:
        """Forget the cached prefix but its first `keep_rows` rows (0: the next call evaluates
        its prompts from the start)."""
        if keep_rows <= 0:
            self._drop_prefix()
        elif keep_rows < self._prefix.shape[0]:
            self._llama.llama_memory_seq_rm(self._memory, 0, keep_rows, -1)
            self._prefix = self._prefix[:keep_rows]

    # ------------------------------------------------------------------ batches

    def _decode_embd(self, items: list[tuple[int, int, np.ndarray]], logits: list[bool]) -> None:
        batch = self._embd_batch
        n = len(items)
        block = np.stack([row for _, _, row in items]).astype(np.float32, copy=False)  # (n, H)
        ctypes.memmove(batch.embd, block.ctypes.data, block.nbytes)
        for j, (seq, pos, _) in enumerate(items):
            batch.pos[j] = pos
            batch.n_seq_id[j] = 1
            batch.seq_id[j][0] = seq
            batch.logits[j] = logits[j]
        batch.n_tokens = n
        self._run(batch)

    def _decode_tokens(self, items: list[tuple[int, int, int]]) -> None:
        batch = self._token_batch
        for j, (seq, token, pos) in enumerate(items):
            batch.token[j] = token
            batch.pos[j] = pos
            batch.n_seq_id[j] = 1
            batch.seq_id[j][0] = seq
            batch.logits[j] = True
        batch.n_tokens = len(items)
        self._run(batch)

    def _run(self, batch: Any) -> None:
        started = time.perf_counter()
        code = self._llama.llama_decode(self._ctx, batch)
        self._llama_s += time.perf_counter() - started
        if code != 0:
            raise RuntimeError(f"llama_decode failed (code {code}): the batch does not fit the context")


@dataclass(frozen=True)
class _Settings:
    max_new_tokens: int
    eos: set[int]
    suppress: np.ndarray
    stop_strings: tuple[str, ...]
    decode: Callable[[list[int]], str] | None
    min_new_tokens: int
    use_prefix_cache: bool
    draft_forced: bool


# Most tokens drafted after one picked token (diagnose's longest forced run is ~20).
_MAX_DRAFT = 64


def _restart(processor: LogitsProcessor | None, n_vocab: int) -> None:
    """Call `processor` with no ids, so a stateful one re-reads the ids of its next call from the start."""
    if processor is not None:
        processor([], np.full(n_vocab, -np.inf, dtype=np.float32))


def _common_rows(a: np.ndarray, b: np.ndarray, limit: int) -> int:
    """How many leading rows of `a` and `b` are identical (at most `limit`)."""
    n = min(limit, a.shape[0], b.shape[0])
    if n <= 0:
        return 0
    same = np.all(a[:n] == b[:n], axis=1)  # (n,)
    return n if same.all() else int(np.argmin(same))


# --------------------------------------------------------------------------- backend choice

BACKENDS: tuple[str, ...] = ("torch", "llamacpp", "auto")
DECODER_ENV = "MEDFUSE_DECODER"
# Generation options the llama.cpp path implements; anything else (sampling, beams, HF
# logits-processor lists) is torch's.
_LLAMACPP_OPTIONS = frozenset({"do_sample", "suppress_tokens", "min_new_tokens", "eos_token_id", "logits_processor",
                               "stop_strings", "pad_token_id"})
_warned_missing = False


def resolve_backend(backend: str | None = None) -> str:
    """"torch" or "llamacpp": `backend`, else `$MEDFUSE_DECODER`, else "torch".

    "auto" is llama.cpp when llama-cpp-python is installed. Asking for "llamacpp" without
    it falls back to torch with a one-line notice (training environments often lack it).
    """
    global _warned_missing
    choice = (backend or os.environ.get(DECODER_ENV) or "torch").lower()
    if choice not in BACKENDS:
        raise ConfigError(f"decoder backend: {choice!r} is not one of {', '.join(BACKENDS)}")
    if choice == "torch":
        return "torch"
    if llamacpp_available():
        return "llamacpp"
    if choice == "llamacpp" and not _warned_missing:
        print("medfuse: llama-cpp-python is not installed; decoding with torch", file=sys.stderr)
        _warned_missing = True
    return "torch"


def decoder_for(model: nn.Module, **kwargs: Any) -> LlamaCppDecoder:
    """The llama.cpp decoder of a `MedFuse`/`MedfuseLM`, opened on first use and kept on it.

    The GGUF is exported (or found in the cache) when the decoder is opened; weights
    changed afterwards (training) are not seen by it: decode trained weights after
    reloading, or use torch.
    """
    decoder = getattr(model, "_llamacpp_decoder", None)
    if decoder is None:
        decoder = LlamaCppDecoder.for_model(model, **kwargs)
        model.__dict__["_llamacpp_decoder"] = decoder  # plain attribute, not a submodule or state
    return decoder


def generate_with_backend(model: nn.Module, texts: Sequence[str], fused: Any | None, max_new_tokens: int,
                          backend: str | None = None, **generate_kwargs: Any) -> list[str] | None:
    """Greedy texts from llama.cpp when the backend resolves to it and the options allow;
    None when the caller should decode with torch (torch chosen, sampling asked for, or
    an option only transformers' generate has)."""
    if resolve_backend(backend) != "llamacpp":
        return None
    if generate_kwargs.get("do_sample") or set(generate_kwargs) - _LLAMACPP_OPTIONS:
        return None
    kwargs = {k: v for k, v in generate_kwargs.items() if k not in ("do_sample", "pad_token_id")}
    if kwargs.get("logits_processor") is not None:
        per_prompt = _per_prompt_processors(kwargs["logits_processor"], len(texts))
        if per_prompt is None:
            return None
        kwargs["logits_processor"] = per_prompt
    return decoder_for(model).generate(list(texts), fused, max_new_tokens=max_new_tokens, **kwargs)


def _per_prompt_processors(processor: Any, n: int) -> list[LogitsProcessor | None] | None:
    """One numpy processor per prompt from what the torch path is given: a list of them
    as is, or a transformers processor list holding one `HFReasoningProcessor` (its
    per-row `ReasoningConstraint`s are numpy processors already). None: torch-only."""
    items = list(processor) if isinstance(processor, Sequence) else [processor]
    if len(items) == 1 and isinstance(getattr(items[0], "constraints", None), list):
        items = items[0].constraints
    elif len(items) == 1 and n != 1:
        items = items * n
    if len(items) != n or any(p is not None and not callable(p) for p in items):
        return None
    # transformers' own processors take torch tensors: they cannot run here.
    if any(type(p).__module__.startswith("transformers") for p in items if p is not None):
        return None
    return items
