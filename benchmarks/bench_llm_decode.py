"""Decode speed of `MedfuseLM.generate` (fused tokens via inputs_embeds) vs plain
`transformers` `generate` (input ids) on the same SmolLM2-135M model, on CPU.

Both runs see a context of the same length: the medfuse prompt holds `<ecg> <cxr> <labs>
<vitals> <clue>` placeholders that expand to 8 + 8 + 4 + 2 + 9 fused tokens (the default
ModelConfig token counts and the 9-disease panel's clue tokens); the plain prompt has the
same text with each placeholder replaced by as many ordinary tokens. Generation is greedy
and forced to exactly `--new-tokens` tokens (EOS ignored) so both decode the same amount.
Reported per batch size: total tokens/s (prefill included), decode-only tokens/s
((N - 1) new tokens / (time for N - time for 1)), and the medfuse/plain ratio. Prints the
figures and writes benchmarks/results/llm_decode.json.

    python benchmarks/bench_llm_decode.py [--new-tokens 128] [--batch-sizes 1 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from medfuse.model.llm import DEFAULT_LLM, FusedTokens, MedfuseLM, chat_prompt

RESULTS = Path(__file__).parent / "results" / "llm_decode.json"
D_MODEL = 256
# Placeholder -> (modality_slices key, fused tokens): ModelConfig defaults + 9 clue tokens.
SLOTS = {"<ecg>": ("ecg", 8), "<cxr>": ("cxr", 8), "<labs>": ("labs", 4), "<vitals>": ("vitals", 2), "<clue>": ("clue", 9)}
USER_TEXT = (
    "ECG: <ecg>\nChest X-ray: <cxr>\nLabs: <labs>\nVital signs: <vitals>\nDisease clues: <clue>\n"
    "History: 68-year-old with two days of cough, fever and breathlessness.\n"
    "Which of the panel diseases are present? Reason step by step from the evidence, then answer."
)


def _fused(batch: int, seed: int = 0) -> FusedTokens:
    g = torch.Generator().manual_seed(seed)
    slices, start = {}, 0
    for key, k in SLOTS.values():
        slices[key] = slice(start, start + k)
        start += k
    tokens = torch.randn(batch, start, D_MODEL, generator=g)  # (B, N, d)
    return FusedTokens(tokens, torch.ones(batch, start, dtype=torch.bool), slices)


def _timed(fn, repeats: int) -> float:
    """Median wall time of `fn()` over `repeats` runs (after one warm-up run)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_LLM, help="backbone id or folder (default: SmolLM2-135M)")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens generated per prompt (<= 128)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per setting; the median is reported")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    start = time.perf_counter()
    model = MedfuseLM.from_pretrained(args.model, d_model=D_MODEL).eval()
    load_s = time.perf_counter() - start
    tokenizer = model.tokenizer
    medfuse_prompt = chat_prompt(tokenizer, USER_TEXT)
    plain_text = USER_TEXT
    for placeholder, (_, k) in SLOTS.items():
        plain_text = plain_text.replace(placeholder, " x" * k)
    plain_prompt = chat_prompt(tokenizer, plain_text)

    result: dict = {
        "what": "greedy decode on CPU: MedfuseLM.generate (inputs_embeds with fused tokens) vs transformers generate (input ids), same model, same context length",
        "model": args.model,
        "new_tokens": args.new_tokens,
        "load_s": round(load_s, 2),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "runs": [],
    }
    forced = {"do_sample": False, "pad_token_id": tokenizer.pad_token_id}
    for batch in args.batch_sizes:
        fused = _fused(batch)
        prompts = [medfuse_prompt] * batch
        ids = tokenizer([plain_prompt] * batch, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            embeds, _ = model.build_inputs(prompts, fused)
        context = {"medfuse": embeds.shape[1], "plain": ids["input_ids"].shape[1]}

        def medfuse_run(n: int) -> None:
            model.generate(prompts, fused, max_new_tokens=n, min_new_tokens=n)

        def plain_run(n: int) -> None:
            with torch.no_grad():
                model.lm.generate(**ids, max_new_tokens=n, min_new_tokens=n, **forced)

        row = {"batch_size": batch, "context_tokens": context}
        for name, run in (("medfuse", medfuse_run), ("plain", plain_run)):
            total = _timed(lambda: run(args.new_tokens), args.repeats)
            first = _timed(lambda: run(1), args.repeats)
            row[name] = {
                "total_s": round(total, 3),
                "first_token_s": round(first, 3),
                "tokens_per_s": round(batch * args.new_tokens / total, 1),
                "decode_tokens_per_s": round(batch * (args.new_tokens - 1) / max(total - first, 1e-9), 1),
            }
        row["medfuse_over_plain_decode"] = round(row["medfuse"]["decode_tokens_per_s"] / row["plain"]["decode_tokens_per_s"], 3)
        result["runs"].append(row)
        print(json.dumps(row))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
