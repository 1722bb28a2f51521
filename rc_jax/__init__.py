"""rc_jax: Reasoning Cache in JAX."""
