"""Explanations of the disease head: attribution, saliency, modality ablation, counterfactuals.

- `explain_case(model, case)` -> `Explanation` (pydantic, JSON-ready; see `explanation`);
- `render_html(explanation, case)` / `explanation_html_fragment(explanation, case)`: a
  self-contained page / the same without <html> and <head> (see `html`);
- `write_explanation_html(path, explanation, case)`: the page, written atomically;
- `deletion_insertion(model, cases)`: faithfulness of the attributions (see `faithfulness`).
"""

from medfuse.explain.explanation import explain_case
from medfuse.explain.faithfulness import FaithfulnessReport, deletion_insertion
from medfuse.explain.html import (
           explanation_html_fragment,
           render_html,
           write_explanation_html,
)
from medfuse.explain.schema import (
           Counterfactual,
           DiseaseAttribution,
           Explanation,
           ItemAttribution,
           ModalityAblation,
)

__all__ = ["Counterfactual", "DiseaseAttribution", "Explanation", "FaithfulnessReport", "ItemAttribution",
           "ModalityAblation", "deletion_insertion", "explain_case", "explanation_html_fragment", "render_html",
           "write_explanation_html"]
