import os
import sys
import tempfile

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # tests/helpers.py (importlib mode adds nothing to sys.path)

os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(tempfile.gettempdir(), "lstm_fused_inductor"))

from helpers import HAS_TESTING_OPS  # noqa: E402

# The test-only ops (lstm_fused_testing::*: the CUDA path emulated on the CPU, planners, path counters) exist only in
# a build made with LSTM_FUSED_TESTING=1, as scripts/test.sh makes it. Where that switch is set, a build without
# them is an error (the emulation tests would silently vanish); elsewhere (a user's install) those tests skip.
if os.environ.get("LSTM_FUSED_TESTING") == "1" and not HAS_TESTING_OPS:
    raise RuntimeError("LSTM_FUSED_TESTING=1 but the installed lstm_fused was built without its test-only ops: "
                       "rebuild it with LSTM_FUSED_TESTING=1 (scripts/test.sh does)")
collect_ignore = [] if HAS_TESTING_OPS else ["test_cuda_emulation.py", "test_persistent_emulation.py"]


@pytest.fixture(autouse=True)
def _fresh_seed():
    torch.manual_seed(1234)
    yield
