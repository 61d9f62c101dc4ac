"""medfuse.train.grpo_loss against TRL 1.16's own GRPOTrainer, on a tiny offline Llama.

The key test builds a real `trl.GRPOTrainer` (tiny Llama saved to a temp folder, offline
tokenizer, dummy reward, CPU, report_to="none"), hands its `compute_loss` a batch built by
hand (prompt/completion ids and masks, advantages, old and reference log-probs, token
count), and checks that `grpo_per_token_loss` on log-probs from the same model gives the
same loss, the same gradients and the same logged metrics. The advantages are checked
against the trainer's `_generate_and_score_completions` with fixed rewards.
"""

from __future__ import annotations

import math
import warnings

import datasets
import pytest
import torch
import trl

from medfuse.train.grpo_loss import group_advantages, grpo_per_token_loss, selective_log_softmax

torch.set_num_threads(1)

TEMPERATURE = 0.7  # != 1 so that the temperature scaling of the log-probs is compared too
MAX_COMPLETION = 7
B, P, T = 6, 5, MAX_COMPLETION  # completions, prompt length, completion length


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from medfuse.model.llm import build_tiny_llm

    model, tokenizer = build_tiny_llm(seed=3)
    folder = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, tokenizer


def make_trainer(tiny_dir, tmp_path, reward_fn=None, **config):
    """A GRPOTrainer as TRL builds it from a model folder (the reference model too, when beta != 0)."""
    folder, tokenizer = tiny_dir
    dataset = datasets.Dataset.from_dict({"prompt": ["a b", "c d", "e f"]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers' gradient_checkpointing rename
        args = trl.GRPOConfig(
            output_dir=str(tmp_path),
            report_to="none",
            use_cpu=True,
            bf16=False,
            save_strategy="no",
            per_device_train_batch_size=B,
            num_generations=2,
            max_completion_length=MAX_COMPLETION,
            temperature=TEMPERATURE,
            **config,
        )
        return trl.GRPOTrainer(
            model=str(folder),
            reward_funcs=reward_fn or (lambda completions, **kw: [0.0] * len(completions)),
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
        )


def hand_batch(vocab_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Left-padded prompts, right-padded completions of different lengths (one empty),
    advantages of both signs, and old/ref log-probs far enough from the current ones to
    trigger clipping on both sides."""
    g = torch.Generator().manual_seed(seed)
    prompt_ids = torch.randint(10, vocab_size, (B, P), generator=g)  # (B, P)
    prompt_mask = torch.ones(B, P, dtype=torch.long)  # (B, P)
    prompt_mask[0, :2] = 0  # left padding
    prompt_mask[3, :1] = 0
    completion_ids = torch.randint(10, vocab_size, (B, T), generator=g)  # (B, T)
    lengths = torch.tensor([T, 3, 5, 1, T, 0])  # the last completion is empty
    completion_mask = (torch.arange(T)[None, :] < lengths[:, None]).long()  # (B, T)
    advantages = torch.tensor([1.2, -0.7, 0.3, -1.5, 0.9, 0.4])  # (B,)
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": advantages,
        "shift_old": 0.35 * torch.randn(B, T, generator=g),  # (B, T): old = current + shift
        "shift_ref": 0.5 * torch.randn(B, T, generator=g),  # (B, T): ref = current + shift
    }


def our_logps(model, batch) -> torch.Tensor:
    """Per-token log-probs (B, T) of the completion ids, with gradient, from plain logits."""
    input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)  # (B, P+T)
    attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)  # (B, P+T)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, P+T, V)
    logits = logits[:, P - 1 : -1]  # (B, T, V): position i predicts completion token i
    return selective_log_softmax(logits, batch["completion_ids"], temperature=TEMPERATURE)


CASES = [
    # (beta, loss_type, extra GRPOConfig, gradient accumulation steps)
    (0.0, "grpo", {}, 1),
    (0.04, "grpo", {}, 1),
    (0.04, "bnpo", {"epsilon_high": 0.28}, 1),
    (0.0, "dr_grpo", {}, 1),
    (0.1, "dr_grpo", {"use_bias_correction_kl": False}, 1),
    (0.0, "dapo", {}, 1),
    (0.04, "dapo", {"epsilon_high": 0.28, "delta": 1.3}, 1),
    (0.04, "grpo", {}, 2),
    (0.04, "dapo", {}, 2),
]


@pytest.mark.parametrize(("beta", "loss_type", "extra", "accum"), CASES)
def test_loss_equals_trl_grpo_trainer(tiny_dir, tmp_path, beta, loss_type, extra, accum):
    trainer = make_trainer(
        tiny_dir, tmp_path, beta=beta, loss_type=loss_type, gradient_accumulation_steps=accum, **extra
    )
    model = trainer.model
    model.train()  # TRL's "train" mode: its grpo/bnpo/dr_grpo losses are divided by the accumulation steps
    trainer.current_gradient_accumulation_steps = accum  # set by Trainer's training loop; none runs here
    batch = hand_batch(model.config.vocab_size)
    mask = batch["completion_mask"]
    # dapo normalises by the completion tokens of the generation batch (here: this micro-batch
    # and another one of `accum - 1` times as many tokens, minus 3, to make it distinct).
    num_items = mask.sum() * accum - (3 if accum > 1 else 0)

    with torch.no_grad():
        current = our_logps(model, batch)  # (B, T)
    old, ref = current + batch["shift_old"], current + batch["shift_ref"]

    inputs = {k: batch[k] for k in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "advantages")}
    inputs |= {"old_per_token_logps": old, "ref_per_token_logps": ref, "num_items_in_batch": num_items}
    model.zero_grad()
    trl_loss = trainer.compute_loss(model, inputs)
    trl_loss.backward()
    trl_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    logged = {k: v[-1] for k, v in trainer._metrics["train"].items()}

    model.zero_grad()
    ours, metrics = grpo_per_token_loss(
        our_logps(model, batch),
        old,
        ref if beta else None,
        batch["advantages"],
        mask,
        beta=beta,
        epsilon_low=trainer.args.epsilon,
        epsilon_high=trainer.args.epsilon_high,
        loss_type=loss_type,
        max_completion_length=MAX_COMPLETION,
        num_items_in_batch=num_items,
        grad_accum_steps=accum,
        delta=trainer.args.delta,
        kl_bias_correction=trainer.args.use_bias_correction_kl,
    )
    ours.backward()
    our_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]

    torch.testing.assert_close(ours, trl_loss, rtol=0, atol=1e-6)
    assert len(our_grads) == len(trl_grads) > 0
    for a, b in zip(our_grads, trl_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    for name in ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean",
                 "clip_ratio/low_min", "clip_ratio/high_max") + (("kl",) if beta else ()):
        assert metrics[name] == pytest.approx(logged[name], abs=1e-6), name
    # The example exercises clipping on both sides, or the comparison would prove little.
    assert metrics["clip_ratio/low_mean"] > 0 and metrics["clip_ratio/high_mean"] > 0


def test_default_loss_type_matches_trl_config():
    sig = grpo_per_token_loss.__kwdefaults__
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        config = trl.GRPOConfig(output_dir="unused", report_to="none", use_cpu=True)
    assert sig["loss_type"] == config.loss_type == "dapo"
    assert sig["beta"] == config.beta and sig["epsilon_low"] == config.epsilon
    assert sig["kl_bias_correction"] == config.use_bias_correction_kl


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_equal_trl(tiny_dir, tmp_path, scale):
    # 3 prompts x 2 generations: a spread group, a zero-variance group, and a group where
    # one completion has no reward at all (None -> NaN: left out, advantage 0).
    rewards = [1.0, 0.0, 0.5, 0.5, 0.2, None]
    trainer = make_trainer(
        tiny_dir, tmp_path, reward_fn=lambda completions, **kw: rewards[: len(completions)], scale_rewards=scale
    )
    trainer.model.train()
    batch = [{"prompt": p} for p in ("a b", "a b", "c d", "c d", "e f", "e f")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = trainer._generate_and_score_completions(batch)
    ours, zero_share = group_advantages(
        torch.tensor([math.nan if r is None else r for r in rewards]), group_size=2, scale=scale
    )
    torch.testing.assert_close(ours, out["advantages"], rtol=0, atol=1e-6)
    if scale != "batch":  # with "batch", TRL's frac_reward_zero_std tests the batch std instead
        assert zero_share == pytest.approx(trainer._metrics["train"]["frac_reward_zero_std"][-1])
    assert zero_share == pytest.approx(1 / 3)  # the [0.5, 0.5] group (a one-reward group has no std)


def test_group_advantages_formula():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.2, 0.4, 0.6, 0.8])  # (B*G,) B=2, G=4
    adv, zero = group_advantages(rewards, group_size=4)
    g = rewards.view(2, 4)
    expected = (g - g.mean(1, keepdim=True)) / (g.std(1, unbiased=True, keepdim=True) + 1e-4)
    torch.testing.assert_close(adv, expected.view(-1))
    assert zero == 0.0
    flat, zero = group_advantages(torch.ones(6), group_size=3)
    assert flat.abs().max() == 0 and zero == 1.0
    with pytest.raises(ValueError, match="multiple of group_size"):
        group_advantages(torch.ones(5), group_size=2)


def test_selective_log_softmax_matches_trl():
    from trl.trainer.utils import selective_log_softmax as trl_selective

    g = torch.Generator().manual_seed(1)
    logits = 3 * torch.randn(3, 4, 50, generator=g)  # (B, T, V)
    index = torch.randint(0, 50, (3, 4), generator=g)  # (B, T)
    for temperature in (1.0, 0.7):
        naive = (logits / temperature).log_softmax(-1).gather(-1, index[..., None]).squeeze(-1)
        torch.testing.assert_close(selective_log_softmax(logits, index, temperature), naive)
        ours = selective_log_softmax(logits, index, temperature)
        torch.testing.assert_close(ours, trl_selective(logits, index, temperature))
    bf16 = selective_log_softmax(logits.bfloat16(), index)
    assert bf16.dtype == torch.bfloat16
    torch.testing.assert_close(bf16.float(), selective_log_softmax(logits, index), atol=0.1, rtol=0.02)


def test_loss_checks_and_metrics_by_hand():
    logps = torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.5]])).requires_grad_()  # (B=2, T=2)
    mask = torch.tensor([[1, 1], [1, 0]])
    old = logps.detach() - torch.tensor([[0.5, 0.0], [-0.5, 0.0]])  # ratio e^0.5 (high) / e^-0.5 (low)
    adv = torch.tensor([1.0, -1.0])
    loss, m = grpo_per_token_loss(logps, old, None, adv, mask, loss_type="bnpo")
    # token 1: min(e^.5, 1.2) * 1 -> -1.2 ; token 2: -1 ; token 3: -min(-e^-.5, -0.8) = 0.8
    assert loss.item() == pytest.approx((-1.2 - 1.0 + 0.8) / 3)
    assert m["clip_ratio/high_mean"] == pytest.approx(1 / 3) and m["clip_ratio/low_mean"] == pytest.approx(1 / 3)
    assert m["clip_ratio/region_mean"] == pytest.approx(2 / 3) and "kl" not in m
    # beta > 0: the k3 KL is zero at ref == logp and positive elsewhere.
    _, m = grpo_per_token_loss(logps, None, logps.detach(), adv, mask, beta=0.1)
    assert m["kl"] == pytest.approx(0.0)
    _, m = grpo_per_token_loss(logps, None, logps.detach() - 1.0, adv, mask, beta=0.1)
    assert m["kl"] == pytest.approx(math.exp(-1) + 1 - 1)
    with pytest.raises(ValueError, match="needs ref_logps"):
        grpo_per_token_loss(logps, None, None, adv, mask, beta=0.1)
    with pytest.raises(ValueError, match="max_completion_length"):
        grpo_per_token_loss(logps, None, None, adv, mask, loss_type="dr_grpo")
    with pytest.raises(ValueError, match="num_items_in_batch"):
        grpo_per_token_loss(logps, None, None, adv, mask, loss_type="dapo", grad_accum_steps=2)
    with pytest.raises(ValueError, match="loss_type"):
        grpo_per_token_loss(logps, None, None, adv, mask, loss_type="ppo")
