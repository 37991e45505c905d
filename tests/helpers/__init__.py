"""Test helpers that are not fixtures: processes in their own sessions, a private local Ray cluster,
synthetic banks (`synthetic_bank`), per-pair reference distances (`distance_reference`), the package-level
import graph (`import_graph`)."""
