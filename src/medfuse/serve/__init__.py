"""The clinician review service behind `medfuse serve`: a FastAPI app (case submission,
diagnosis and explanation, review page, feedback, FHIR / DICOM SR export, an
OpenAI-compatible chat endpoint), its SQLAlchemy store, and the preference-pair export.

    from medfuse.serve import ServeSettings, TokenRegistry, create_app
    tokens = TokenRegistry(); token = tokens.add("dr-a", "clinician")
    app = create_app(ServeSettings(tokens=tokens, checkpoint=Path("ckpt")))

Imports are lazy (PEP 562) so that `import medfuse.serve` loads no web framework.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "ServeSettings": "medfuse.serve.app",
    "create_app": "medfuse.serve.app",
    "TokenRegistry": "medfuse.serve.auth",
    "ReviewStore": "medfuse.serve.db",
    "export_preference_pairs": "medfuse.serve.preferences",
    "diagnostic_report": "medfuse.serve.exports",
    "structured_report": "medfuse.serve.exports",
    "run_load_test": "medfuse.serve.loadtest",
}

__all__ = ["ReviewStore", "ServeSettings", "TokenRegistry", "create_app", "diagnostic_report",
           "export_preference_pairs", "run_load_test", "structured_report"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'medfuse.serve' has no attribute {name!r}")
    return getattr(import_module(module), name)
