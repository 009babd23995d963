import os
import sys
import tempfile

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # tests/helpers.py (importlib mode adds nothing to sys.path)

os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(tempfile.gettempdir(), "lstm_fused_inductor"))


@pytest.fixture(autouse=True)
def _fresh_seed():
    torch.manual_seed(1234)
    yield
