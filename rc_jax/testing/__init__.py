"""Test helpers (tiny, offline artifacts) for rc_jax."""
