"""The attention model: weights ``(Q, K, V)``, LoRA perturbations and initial densities.

Pure NumPy, any dimension ``d``.

Examples
--------
>>> import numpy as np
>>> from solver.model import Model, TiedLoRA, low_rank
>>> base = Model(Q=np.eye(2), K=np.eye(2), V=np.eye(2))
>>> lora = base.perturbed(TiedLoRA(dA=np.zeros((2, 2)), dV=low_rank([0, -0.01], [0, 1])))
>>> lora.parameters(0.0)[1]
array([[1.  , 0.  ],
       [0.  , 0.99]])
"""

from ._attention import Model, MultiHeadModel
from ._initial import (
    Density,
    Expression,
    Mixture,
    Uniform,
    VonMisesFisher,
    parse_expression,
    sphere_area,
)
from ._lora import Perturbation, RandomLoRA, ScheduledLoRA, TiedLoRA, as_matrix, low_rank

__all__ = [
    "Model",
    "MultiHeadModel",
    "Perturbation",
    "TiedLoRA",
    "RandomLoRA",
    "ScheduledLoRA",
    "low_rank",
    "as_matrix",
    "Density",
    "Uniform",
    "VonMisesFisher",
    "Mixture",
    "Expression",
    "parse_expression",
    "sphere_area",
]
