"""Helpers shared by the tests: local Ray and served apps, the tiny model, doubles."""
