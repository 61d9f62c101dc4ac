"""The finding head: targets per slot, the loss, decoding, and how diagnose reports its boxes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medfuse.model.config import DEFAULT_FINDING_LABELS, ModelConfig
from medfuse.model.findings import SLOTS_PER_LABEL, FindingHead, decode_findings, finding_loss, finding_targets
from medfuse.record.case import Finding, Labels, PatientCase

LABELS = list(DEFAULT_FINDING_LABELS)


def _case(findings):
    return PatientCase(case_id="c", labels=Labels(findings=findings))


def test_targets_put_each_box_in_its_label_and_side_slot():
    case = _case([Finding(label="pleural effusion", boxes=[[100, 600, 400, 900], [600, 620, 900, 880]]),
                  Finding(label="nodule", boxes=[[700, 200, 760, 260]]),
                  Finding(label="rib fracture", boxes=[[1, 1, 5, 5]])])  # not a head label: ignored
    presence, boxes = finding_targets(case, LABELS)
    assert presence.shape == (len(LABELS) * SLOTS_PER_LABEL,) and boxes.shape == (presence.shape[0], 4)
    eff, nod = LABELS.index("pleural effusion") * 2, LABELS.index("nodule") * 2
    assert np.flatnonzero(presence).tolist() == sorted([eff, eff + 1, nod + 1])
    # (cx, cy, w, h) in [0, 1]: the left effusion box [100, 600, 400, 900] / 999.
    np.testing.assert_allclose(boxes[eff], np.array([250, 750, 300, 300]) / 999, atol=1e-6)
    # Decoding the targets as if they were predictions gives the gold boxes back (within rounding).
    found = decode_findings(presence, boxes, LABELS, threshold=0.5)
    assert sorted(found) == sorted([("pleural effusion", [100, 600, 400, 900]), ("pleural effusion", [600, 620, 900, 880]),
                                    ("nodule", [700, 200, 760, 260])])


def test_decoding_keeps_one_lesion_size_per_side_and_drops_empty_boxes():
    q = len(LABELS) * SLOTS_PER_LABEL
    probs, boxes = np.zeros(q), np.tile([0.7, 0.3, 0.1, 0.1], (q, 1))
    nodule, mass = LABELS.index("nodule") * 2 + 1, LABELS.index("mass") * 2 + 1
    probs[nodule], probs[mass] = 0.6, 0.9  # both on the right half: one lesion
    probs[0], boxes[0] = 0.99, [0.2, 0.5, 0.0, 0.2]  # zero width: not a box
    assert [label for label, _ in decode_findings(probs, boxes, LABELS)] == ["mass"]


def test_loss_falls_when_the_head_fits_one_batch():
    torch.manual_seed(0)
    head = FindingHead(16, 2, len(LABELS))
    patches = torch.randn(4, 9, 16)  # (B, n, d)
    presence = torch.zeros(4, head.n_queries)
    presence[0, 2], presence[1, 5] = 1, 1
    target = torch.rand(4, head.n_queries, 4) * 0.3 + 0.3
    has_image = torch.tensor([True, True, True, False])
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        logits, boxes = head(patches)
        loss = finding_loss(logits, boxes, presence, target, has_image)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]
    # No image in the batch: no loss, and no NaN.
    assert float(finding_loss(logits, boxes, presence, target, torch.zeros(4, dtype=torch.bool))) == 0.0


def test_config_checks_finding_settings():
    from medfuse.errors import ConfigError

    with pytest.raises(ConfigError, match="finding_labels"):
        ModelConfig(finding_labels=["nodule", "nodule"])
    with pytest.raises(ConfigError, match="finding_threshold"):
        ModelConfig(finding_threshold=1.5)


def test_diagnose_reports_the_trained_heads_boxes_over_generated_ones(monkeypatch):
    from medfuse.model.diagnosis import diagnose_many
    from medfuse.model import MedFuse
    from test_record import full_case

    from test_model_diagnose import TINY

    torch.set_num_threads(1)
    model = MedFuse.build(ModelConfig.from_dict(TINY), tiny_llm=True)
    case = full_case()
    case.ecg = case.ecg.model_copy(update={"signal": case.ecg.signal[:2000], "n_samples": 2000})
    text = ("<think>x</think><answer>pneumonia</answer><ref>consolidation</ref><box>[[10, 20, 30, 40]]</box>"
            "<ref>cardiomegaly</ref><box>[[300, 400, 700, 650]]</box>")
    monkeypatch.setattr(model, "generate", lambda prompts, fused, max_new_tokens=128, **_: [text] * len(prompts))
    # Untrained head: its random boxes are never shown; the generated boxes are.
    (d,) = diagnose_many(model, [case])
    assert [f.label for f in d.result.findings] == ["consolidation", "cardiomegaly"]
    # Trained head that finds a consolidation: its box wins over the generated one for that label.
    model.card["findings_trained"] = True
    real_fuse = model.fuse

    def fuse_with_a_finding(cases):
        fused = real_fuse(cases)
        fused.findings = [[("consolidation", [100, 500, 400, 800])] for _ in cases]
        return fused

    monkeypatch.setattr(model, "fuse", fuse_with_a_finding)
    (d,) = diagnose_many(model, [case])
    assert [(f.label, f.box) for f in d.result.findings] == [("consolidation", [100, 500, 400, 800]),
                                                             ("cardiomegaly", [300, 400, 700, 650])]
    assert d.dropped_findings == ["consolidation: the finding head's box is reported instead of the generated [10, 20, 30, 40]"]
