"""CLI verbs for this group (to be filled in by its issue)."""
