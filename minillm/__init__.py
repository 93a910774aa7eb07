"""minillm: a from-scratch LLM training lab on NumPy (CPU) or CuPy (GPU).

The engine (``Tensor``, ``no_grad``), layers (``nn``), functions (``functional`` as ``F``), optimizers
(``optim``), checkpoints (``save``/``load``) and gradient checks (``gradcheck``) live here; models,
data, training phases, PEFT methods, the chat runtime and the CUDA kernels live in the sub-packages.
"""

import minillm.cuda.kernels  # noqa: F401  (our CUDA kernels follow set_backend("cupy"); cupy loads lazily)
from minillm import backend, functional, nn, optim
from minillm import functional as F
from minillm.backend import get_backend, gpu_available, manual_seed, set_backend, set_default_dtype, to_numpy
from minillm.checkpoint import CheckpointError, load, save
from minillm.gradcheck import GradcheckError, gradcheck
from minillm.tensor import (
    Tensor,
    arange,
    cat,
    concat,
    is_grad_enabled,
    no_grad,
    ones,
    randn,
    stack,
    tensor,
    where,
    zeros,
)

__version__ = "0.1.0"

__all__ = [
    "F", "Tensor", "CheckpointError", "GradcheckError", "arange", "backend", "cat", "concat", "functional",
    "get_backend", "gpu_available", "gradcheck", "is_grad_enabled", "load", "manual_seed", "nn", "no_grad",
    "ones", "optim", "randn", "save", "set_backend", "set_default_dtype", "stack", "tensor", "to_numpy",
    "where", "zeros",
]
