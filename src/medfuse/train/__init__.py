"""Training stages of DESIGN.md (encoders, alignment, SFT, GRPO), one module per stage.

Every stage runs the one loop of `loop` (optimiser, schedule, clip, metrics.jsonl,
resumable state) with its own objective, batches and trainable parts
(`MedFuse.trainable_parts`); `config` holds the stage configs, `task_data` the instruction
samples of the language-model stages, `lm_eval` the scoring of their answers, `rewards`
the GRPO reward functions and `grpo_loss` the GRPO advantages and per-token loss (checked
against TRL's). Modules are imported on use, so that importing `medfuse.train` loads
neither torch nor TRL.
"""
