"""lstm_fused: fused C++/CUDA LSTM kernels behind a drop-in replacement for torch.nn.LSTM."""
import importlib.machinery
import os

import torch  # noqa: F401  (the extension links against libtorch; load it first)

from ._version import __version__


def _check_build_torch():
    """The compiled _C only works with the torch it was built against (the C++ ABI changes between versions):
    say so, and how to rebuild, instead of failing with an undefined symbol."""
    try:
        from ._build_info import TORCH_VERSION
    except ImportError:  # a source tree that was never built
        return
    if TORCH_VERSION != torch.__version__:
        raise ImportError(
            f"lstm_fused {__version__} was built against torch {TORCH_VERSION}, but torch {torch.__version__} is "
            "imported. Rebuild it against this torch: `pip install --no-build-isolation --force-reinstall "
            "--no-deps lstm_fused` (or `pip install --no-build-isolation .` from its source tree)."
        )


def library_path() -> str:
    """Path of the compiled library holding the lstm_fused ops (no Python inside: a C++ AOTInductor or TorchScript
    runner links or dlopens it to register the ops). Empty when the package was never built."""
    here = os.path.dirname(os.path.abspath(__file__))
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        if os.path.exists(os.path.join(here, "_C" + suffix)):
            return os.path.join(here, "_C" + suffix)
    return ""


_check_build_torch()
try:  # loading the library runs its TORCH_LIBRARY registrations
    if not library_path():
        raise ImportError("no compiled library _C*.so next to the package")
    torch.ops.load_library(library_path())
except (ImportError, OSError) as e:  # never fall back to nn.LSTM silently
    raise ImportError(
        "lstm_fused: the compiled extension lstm_fused._C could not be loaded "
        f"({e}). Build it against the torch in this environment with "
        "`pip install --no-build-isolation .` from the lstm_fused source tree "
        "(see README.md, 'Build'). If you are running from the source folder, run from elsewhere or use "
        "pytest's --import-mode=importlib so the installed package is the one imported."
    ) from e

from . import ops  # noqa: E402,F401  (fake kernels and autograd)
from . import reference  # noqa: E402,F401
from .modules import GRU, LSTM, GRUCell, LSTMCell, convert  # noqa: E402

__all__ = ["LSTM", "GRU", "LSTMCell", "GRUCell", "convert", "ops", "reference", "has_cuda_kernels", "library_path",
           "__version__"]


def has_cuda_kernels() -> bool:
    """True when this build of the extension contains the CUDA kernels."""
    return ops.has_kernel("CUDA")
