"""Test helpers that are not fixtures: processes in their own sessions, a private local Ray cluster."""
