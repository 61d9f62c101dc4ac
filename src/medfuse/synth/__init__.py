"""Synthetic multimodal patients with known ground truth (`medfuse synth`).

- `diseases`: demographics, smoking and panel diseases with comorbidity rules (data);
- `cxr`, `ecg`, `labs`, `vitals`, `notes`, `genomics`: one generator per modality;
- `report`: the reference radiology report from the drawn findings;
- `cohort`: `SynthConfig`, `synth_case(seed, index, config)` and `synth_cohort(...)`,
  which writes case folders, the index and `DATASHEET.md`.
"""
