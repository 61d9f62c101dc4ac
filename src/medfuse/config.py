"""One YAML-config base for every typed config (model, synthetic cohort, training stages)."""
