"""The autodiff library, imported lazily: ``import solver`` and ``import solver.nn`` need no JAX.

JAX (CPU wheel from PyPI, extra ``ml``) computes every gradient of :mod:`solver.nn`; no
gradient is written by hand. float64 is enabled (``jax_enable_x64``) so that the forward
pass of :class:`~solver.nn.MeanFieldTransformer` agrees with :func:`solver.simulate_particles`
to round-off; arrays passed in float32 stay float32 (the real_models experiment trains in
float32 and evaluates in float64).
"""

from __future__ import annotations

__all__ = ["jax_modules"]


def jax_modules():
    """``(jax, jax.numpy)`` with float64 enabled; ImportError naming the extra to install."""
    try:
        import jax
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "solver.nn needs JAX: pip install 'meanfield-lora-solver[ml]' (jax, safetensors)"
        ) from e
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    return jax, jnp
