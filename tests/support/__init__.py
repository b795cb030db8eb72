"""Rigs and fixtures shared by the test layers (importable as tests.support)."""
