"""The guard every command that reads inputs and writes an output runs first: the output
must not be, lie inside, or hold one of the inputs.

It lives in `medfuse.record.store` so that library entry points (the training stages,
site recalibration) run the same check; commands call it before any slow work.
"""

from __future__ import annotations

from medfuse.record.store import check_output_apart

__all__ = ["check_output_apart"]
