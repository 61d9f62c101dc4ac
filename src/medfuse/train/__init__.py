"""Training stages of DESIGN.md (encoders, alignment, SFT, GRPO), one module per stage.

`rewards` holds the GRPO reward functions and `grpo_loss` the GRPO advantages and
per-token loss (checked against TRL's). Modules are imported on use, so that importing
`medfuse.train` loads neither torch nor TRL.
"""
