import pytest
import torch

from clipocr.pipeline.precision import autocast


def test_auto_is_fp32_on_cpu_and_bf16_is_honoured() -> None:
    x = torch.randn(4, 4)
    with autocast("auto", torch.device("cpu")):
        assert (x @ x).dtype == torch.float32
    with autocast("bf16", torch.device("cpu")):
        assert (x @ x).dtype == torch.bfloat16


def test_unknown_precision() -> None:
    with pytest.raises(ValueError, match="fp8"):
        autocast("fp8", torch.device("cpu"))
