"""``launches_on_input_device``: kernels launch on their tensors' GPU, and a shape no kernel config
fits in shared memory is an error naming the op."""
import pytest
import torch
from triton.runtime.errors import OutOfResources

from segvit_rt.kernels._common import launches_on_input_device


def test_out_of_shared_memory_is_an_error_naming_the_op():
    @launches_on_input_device("atm_attention")
    def launch(q):
        raise OutOfResources(426496, 232448, "shared memory")

    q = torch.zeros(1, 2, 2048)
    with pytest.raises(ValueError, match=r"atm_attention: no kernel config fits this GPU for inputs of shape "
                                         r"\(1, 2, 2048\) and dtype torch.float32 .*shared memory"):
        launch(q)


def test_the_launch_runs_and_returns_as_is():
    seen = []

    @launches_on_input_device("op")
    def launch(t, extra, *, key):
        seen.append((extra, key, torch.cuda.current_device() if t.is_cuda else None))
        return "done"

    device = torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    assert launch(torch.zeros(1, device=device), 3, key="k") == "done"
    assert seen == [(3, "k", 0 if device.type == "cuda" else None)]
