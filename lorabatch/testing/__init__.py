"""Small, fast, seeded fixtures for tests and examples (no training, no network)."""
