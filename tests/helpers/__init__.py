"""Test helpers that are not fixtures: processes in their own sessions, a private local Ray cluster,
tiny seeded banks (`tiny_bank`), per-pair reference distances (`distance_reference`)."""
