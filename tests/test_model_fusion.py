"""Fusion model: shapes, masking of missing modalities, gates, cross-modal attention, clues,
user vision backbones, and that every fusion strategy trains."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medfuse.errors import ConfigError, InputError
from medfuse.knowledge.labs import load_lab_catalogue
from medfuse.knowledge.panel import load_panel
from medfuse.model.config import FUSION_STRATEGIES, ModelConfig
from medfuse.model.fusion import STRATEGIES, FusionModel, fusion_strategy, gate_kl_to_uniform, tokens_per_case
from medfuse.model.inputs import GENOMICS_VOCAB, NOTES_DIM, FeatureStats, collate, featurize
from medfuse.record.case import ECG, MODALITIES, CXRImage, Diagnosis, Labels, LabResult, PatientCase, VitalSigns

pytestmark = pytest.mark.usefixtures("one_torch_thread")


PANEL = load_panel()
D = len(PANEL)
L = len(load_lab_catalogue())
G = len(GENOMICS_VOCAB)
TOKENS = {"ecg": 3, "cxr": 3, "labs": 2, "vitals": 2, "notes": 2, "genomics": 2}
M_IDX = {m: i for i, m in enumerate(MODALITIES)}


def tiny_config(fusion: str = "hybrid", **kw) -> ModelConfig:
    base = dict(d_model=32, n_heads=2, tokens=TOKENS, fusion=fusion, ecg_fs=50.0, ecg_seconds=4.0, ecg_channels=8,
                cxr_size=32, cxr_vit={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                      "intermediate_size": 64, "patch_size": 8}, dropout=0.0)
    base.update(kw)
    return ModelConfig(**base)


def tiny_model(fusion: str = "hybrid", **kw) -> FusionModel:
    return FusionModel(tiny_config(fusion, **kw), PANEL, n_labs=L, n_genes=G)


def synthetic_batch(B: int, seed: int = 0, present: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """A collated batch whose inputs carry the labels (each modality sees some diseases)."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(B, D, generator=g) < 0.35).float()  # (B, D)
    T = 200
    t = torch.arange(T) / 50.0
    amp = 0.3 + y[:, 0:1, None] + 0.5 * y[:, 1:2, None]  # (B, 1, 1)
    ecg = amp * torch.sin(2 * math.pi * (1 + y[:, 2:3, None]) * t) + 0.05 * torch.randn(B, 12, T, generator=g)
    cxr = 0.2 * torch.rand(B, 1, 32, 32, generator=g)
    cxr[:, :, 8:24, 8:24] += 0.6 * y[:, 4, None, None, None]  # a bright blob for one disease
    labs = torch.zeros(B, L, 2)
    labs[:, :D, 0] = 2 * y - 1 + 0.3 * torch.randn(B, D, generator=g)
    labs[:, :D, 1] = 1.0
    vitals = torch.stack([y[:, 5] * 2 - 1 + 0.2 * torch.randn(B, generator=g), torch.ones(B)], dim=-1)[:, None].repeat(1, 6, 1)
    proj = torch.randn(D, NOTES_DIM, generator=g)
    notes = torch.nn.functional.normalize(y @ proj + 0.1 * torch.randn(B, NOTES_DIM, generator=g), dim=1)
    genomics = torch.zeros(B, G)
    genomics[:, 0] = y[:, 8]
    genomics[:, 1] = 1.0
    if present is None:
        present = torch.rand(B, 6, generator=g) < 0.75
        present[:, 2] = True  # at least one modality per case
    return {"ecg": ecg.float(), "ecg_lead_mask": torch.ones(B, 12), "cxr": cxr.clamp(0, 1), "labs": labs,
            "vitals": vitals.float(), "genomics": genomics, "notes_emb": notes.float(), "present": present, "labels": y}


def _check_gates(gates: torch.Tensor, present: torch.Tensor) -> None:
    assert gates.shape == present.shape
    assert (gates >= 0).all()
    assert torch.all(gates[~present] == 0), "a missing modality has gate exactly 0"
    torch.testing.assert_close(gates.sum(1), torch.ones(len(gates)), atol=1e-5, rtol=0)


@pytest.mark.parametrize("fusion", FUSION_STRATEGIES)
def test_shapes_masks_and_gates_for_every_strategy(fusion):
    model = tiny_model(fusion).eval()
    batch = synthetic_batch(5)
    with torch.no_grad():
        out = model(batch)
    N = tokens_per_case(model.config, D)
    assert N == sum(TOKENS.values()) + D
    assert out.tokens.shape == (5, N, 32) and out.token_mask.shape == (5, N) and out.disease_logits.shape == (5, D)
    assert set(out.aux_logits) == set(MODALITIES) and all(v.shape == (5, D) for v in out.aux_logits.values())
    assert list(out.modality_slices) == [*MODALITIES, "clue"]
    for m in MODALITIES:
        s = out.modality_slices[m]
        assert s.stop - s.start == TOKENS[m]
        assert torch.equal(out.token_mask[:, s], batch["present"][:, M_IDX[m], None].expand(-1, TOKENS[m]))
        assert torch.all(out.tokens[~batch["present"][:, M_IDX[m]]][:, s] == 0), "missing modality tokens are zero"
    assert out.token_mask[:, out.modality_slices["clue"]].all()
    _check_gates(out.gates, batch["present"])
    assert torch.isfinite(out.tokens).all() and torch.isfinite(out.disease_logits).all()


@pytest.mark.parametrize("fusion", FUSION_STRATEGIES)
def test_garbage_in_a_missing_modality_changes_nothing(fusion):
    model = tiny_model(fusion).eval()
    present = torch.ones(4, 6, dtype=torch.bool)
    present[0, M_IDX["cxr"]] = present[0, M_IDX["ecg"]] = present[0, M_IDX["genomics"]] = False
    present[2, M_IDX["notes"]] = False
    batch = synthetic_batch(4, present=present)
    garbage = {k: v.clone() for k, v in batch.items()}
    garbage["cxr"][0] = 1e6 * torch.randn(1, 32, 32)
    garbage["ecg"][0] = float("nan")
    garbage["genomics"][0] = 1.0
    garbage["notes_emb"][2] = float("inf")
    with torch.no_grad():
        clean, dirty = model(batch), model(garbage)
    for name in ("tokens", "token_mask", "gates", "disease_logits"):
        assert torch.equal(getattr(clean, name), getattr(dirty, name)), name
    for m in MODALITIES:
        assert torch.equal(clean.aux_logits[m][present[:, M_IDX[m]]], dirty.aux_logits[m][present[:, M_IDX[m]]])
    # Training on such a batch stays finite: NaN garbage never reaches a gradient.
    model.train()
    dirty = model(garbage)
    model.loss(garbage, dirty).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("fusion", ["hybrid", "early"])
def test_a_case_does_not_depend_on_its_batch_mates(fusion):
    model = tiny_model(fusion).eval()
    batch = synthetic_batch(6, seed=3)
    with torch.no_grad():
        full = model(batch)
        alone = model({k: v[2:3] for k, v in batch.items()})
    torch.testing.assert_close(full.tokens[2:3], alone.tokens, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(full.disease_logits[2:3], alone.disease_logits, atol=1e-5, rtol=1e-4)


def test_perception_attends_only_across_present_modalities():
    model = tiny_model("hybrid").eval()
    present = torch.ones(3, 6, dtype=torch.bool)
    present[1, M_IDX["cxr"]] = False
    present[2] = False
    present[2, M_IDX["labs"]] = True  # one modality alone: nothing to attend to
    batch = synthetic_batch(3, present=present)
    tokens, _ = model.modality_tokens(batch)
    seq = torch.cat([tokens[m] for m in MODALITIES], dim=1)
    with torch.no_grad():
        per = model.perception(seq, model.token_modality, present)
    attn = per.attention[0]  # (B, H, N, N)
    tm = model.token_modality
    same = tm[:, None] == tm[None, :]
    assert torch.all(attn[:, :, same] == 0), "a modality never attends to its own tokens"
    cxr_keys = tm == M_IDX["cxr"]
    assert torch.all(attn[1][:, :, cxr_keys] == 0), "a missing modality is never a key"
    rows = attn[0].sum(-1)  # (H, N): everything present -> every row sums to 1
    torch.testing.assert_close(rows, torch.ones_like(rows))
    assert torch.all(attn[2] == 0)
    # Cross-modal attention is real: changing the labs changes the ECG tokens (hybrid) ...
    changed = {k: v.clone() for k, v in batch.items()}
    changed["labs"][0, :, 0] += 1.5
    ecg = model.modality_slices["ecg"]
    with torch.no_grad():
        assert not torch.allclose(model(batch).tokens[0, ecg], model(changed).tokens[0, ecg])
        # ... but not the ECG tokens of feature fusion, which concatenates encoder outputs.
        feature = tiny_model("feature").eval()
        torch.testing.assert_close(feature(batch).tokens[0, ecg], feature(changed).tokens[0, ecg])


def test_hybrid_gates_weight_the_tokens_and_the_pooled_representation():
    model = tiny_model("hybrid").eval()
    final = model.perception.gate[-1]
    with torch.no_grad():
        final.weight.zero_()
        final.bias.copy_(torch.tensor([0.0, 0.0, 12.0, 0.0, 0.0, 0.0]))  # strongly prefer labs
    batch = synthetic_batch(4, seed=1, present=torch.ones(4, 6, dtype=torch.bool))
    with torch.no_grad():
        out = model(batch)
    assert torch.all(out.gates[:, M_IDX["labs"]] > 0.99)
    ecg, labs = model.modality_slices["ecg"], model.modality_slices["labs"]
    assert out.tokens[:, ecg].abs().max() < 0.05 * out.tokens[:, labs].abs().max()  # down-weighted modality fades
    batch["present"][:, M_IDX["labs"]] = False  # the favourite missing: the rest share the weight
    with torch.no_grad():
        out = model(batch)
    _check_gates(out.gates, batch["present"])
    torch.testing.assert_close(out.gates[:, M_IDX["ecg"]], torch.full((4,), 0.2))


def test_late_fusion_is_a_learned_weighted_vote():
    model = tiny_model("late").eval()
    with torch.no_grad():
        model.vote.copy_(torch.tensor([math.log(3.0), 0.0, 0.0, 0.0, 0.0, 0.0]))
    present = torch.zeros(2, 6, dtype=torch.bool)
    present[:, M_IDX["cxr"]] = present[:, M_IDX["labs"]] = True
    batch = synthetic_batch(2, present=present)
    with torch.no_grad():
        out = model(batch)
    torch.testing.assert_close(out.gates[:, M_IDX["cxr"]], torch.full((2,), 0.75))
    expected = 0.75 * out.aux_logits["cxr"] + 0.25 * out.aux_logits["labs"]
    torch.testing.assert_close(out.disease_logits, expected)


@pytest.mark.parametrize("fusion", ["feature", "early"])
def test_norm_attribution_gates_follow_the_joint_layer(fusion):
    model = tiny_model(fusion).eval()
    batch = synthetic_batch(3, present=torch.ones(3, 6, dtype=torch.bool))
    with torch.no_grad():
        before = model(batch).gates
        # Silence the labs block of the joint layer's input: labs then contribute nothing.
        dims = ([model.raw_dims[m] for m in MODALITIES] if fusion == "early" else [32] * 6)
        start = sum(dims[: M_IDX["labs"]])
        model.joint[0].weight[:, start : start + dims[M_IDX["labs"]]] = 0
        after = model(batch).gates
    assert torch.all(before[:, M_IDX["labs"]] > 0) and torch.all(after[:, M_IDX["labs"]] == 0)
    _check_gates(after, batch["present"])


def test_clue_tokens_can_be_switched_off():
    with_clues, without = tiny_model("hybrid"), tiny_model("hybrid", use_clues=False)
    batch = synthetic_batch(2)
    with torch.no_grad():
        a, b = with_clues.eval()(batch), without.eval()(batch)
    assert a.tokens.shape[1] == sum(TOKENS.values()) + D and b.tokens.shape[1] == sum(TOKENS.values())
    assert "clue" in a.modality_slices and "clue" not in b.modality_slices
    # Clue tokens read the per-modality scores: different aux opinions give different clues.
    with torch.no_grad():
        aux = torch.stack([a.aux_logits[m] for m in MODALITIES], dim=1)
        clues = with_clues.clues(aux, batch["present"])
        torch.testing.assert_close(clues, a.tokens[:, a.modality_slices["clue"]])
        assert not torch.allclose(clues, with_clues.clues(aux + 3.0, batch["present"]))


def test_same_seed_same_initialisation():
    a, b, c = tiny_model(seed=7), tiny_model(seed=7), tiny_model(seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.parametrize("fusion", FUSION_STRATEGIES)
def test_every_strategy_trains_with_falling_loss(fusion):
    torch.manual_seed(0)
    model = tiny_model(fusion).train()
    batch = synthetic_batch(24, seed=11)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        out = model(batch)
        loss = model.loss(batch, out)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], (fusion, losses[0], losses[-1])
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


def test_featurized_cases_flow_through_the_model():
    rng = np.random.default_rng(0)
    cases = [
        PatientCase(case_id="a", ecg=ECG(signal=rng.normal(0, 0.3, (2500, 12)), fs=500.0,
                                         leads=["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]),
                    cxr=[CXRImage(pixels=rng.integers(0, 255, (80, 64), dtype=np.uint8), view="PA")],
                    labs=[LabResult(name="BNP", value=900.0, unit="pg/mL")],
                    labels=Labels(diagnoses=[Diagnosis(name="heart failure")])),
        PatientCase(case_id="b", vitals=[VitalSigns(heart_rate=130.0, temperature=39.2)], labels=Labels()),
    ]
    stats = FeatureStats.fit(cases)
    config = tiny_config()
    batch = collate([featurize(c, config, stats, PANEL, notes_emb=np.zeros(NOTES_DIM)) for c in cases])
    model = FusionModel(config, PANEL, n_labs=L, n_genes=G)
    out = model(batch)
    model.loss(batch, out).backward()
    assert batch["present"].tolist() == [[True, True, True, False, False, False], [False, False, False, True, False, False]]
    _check_gates(out.gates.detach(), batch["present"])
    assert out.gates[1, M_IDX["vitals"]] == 1.0  # the only modality carries all the weight


def test_a_user_vision_model_from_a_local_folder(tmp_path):
    from transformers import ViTConfig, ViTModel

    ViTModel(ViTConfig(image_size=48, patch_size=16, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=48, num_channels=3)).save_pretrained(tmp_path / "vit")
    model = tiny_model("hybrid", cxr_vision_model=str(tmp_path / "vit")).eval()
    enc = model.encoders["cxr"]
    assert (enc.in_channels, enc.input_size) == (3, 48)
    with torch.no_grad():
        out = model(synthetic_batch(2, present=torch.ones(2, 6, dtype=torch.bool)))
    assert out.tokens.shape[0] == 2 and torch.isfinite(out.tokens).all()
    with pytest.raises(InputError, match="cannot load a vision model"):
        tiny_model("hybrid", cxr_vision_model=str(tmp_path / "missing"))


def test_gate_balance_penalty_is_zero_at_uniform_gates_and_ignores_missing_modalities():
    present = torch.tensor([[True, True, False, False, True, False], [False] * 5 + [True]])
    uniform = present.float() / present.sum(1, keepdim=True)
    assert gate_kl_to_uniform(uniform, present).item() == pytest.approx(0.0, abs=1e-7)
    skewed = torch.tensor([[0.8, 0.1, 0.0, 0.0, 0.1, 0.0], [0.0] * 5 + [1.0]])
    expected = (0.8 * math.log(0.8 * 3) + 2 * 0.1 * math.log(0.1 * 3)) / 2  # the single-modality case adds 0
    assert gate_kl_to_uniform(skewed, present).item() == pytest.approx(expected, rel=1e-5)
    # The hybrid loss carries it; switching it off removes exactly that term.
    batch = synthetic_batch(4, seed=5)
    on, off = tiny_model("hybrid").eval(), tiny_model("hybrid", gate_balance=0.0).eval()
    with torch.no_grad():
        out = on(batch)
        diff = on.loss(batch, out) - off.loss(batch, out)
    torch.testing.assert_close(diff, 0.05 * gate_kl_to_uniform(out.gates, batch["present"]))


def test_every_configurable_strategy_has_one_registered_class():
    assert tuple(STRATEGIES) == FUSION_STRATEGIES
    assert all(isinstance(fusion_strategy(name), cls) for name, cls in STRATEGIES.items())
    with pytest.raises(ConfigError, match="fusion: must be one of"):
        fusion_strategy("middle")


# The state-dict prefixes of each strategy's own layers: checkpoints store these flat keys.
OWN_LAYERS = {"early": {"raw_tokenizers", "raw_norm", "joint", "head"},
              "feature": {"encoders", "finding_head", "joint", "head"},
              "late": {"encoders", "finding_head", "vote"},
              "hybrid": {"encoders", "finding_head", "perception", "head"}}


@pytest.mark.parametrize("fusion", FUSION_STRATEGIES)
def test_strategy_layers_keep_flat_checkpoint_keys(fusion):
    prefixes = {key.split(".")[0] for key in tiny_model(fusion).state_dict()}
    assert prefixes == OWN_LAYERS[fusion] | {"type_embed", "aux_heads", "clues"}


@pytest.mark.parametrize("fusion", FUSION_STRATEGIES)
def test_sft_trains_the_shared_layers_and_the_strategy_layers_above_the_encoders(fusion):
    model = tiny_model(fusion)
    names = {id(m): n for n, m in model.named_modules()} | {id(p): n for n, p in model.named_parameters()}
    above = {"early": ["joint", "head"], "feature": ["joint", "head"], "late": [], "hybrid": ["perception", "head"]}
    assert [names[id(p)] for p in model.trainable_parts("sft")] == ["aux_heads", "type_embed", "clues", *above[fusion]]
    assert model.trainable_parts("encoders") == [model]
    assert model.trainable_parts("align") == model.trainable_parts("grpo") == []
