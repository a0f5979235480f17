"""Which builds of the compiled kernels the ISA tests compare."""
import os
import platform
import shutil

import torch

from mambakit.ops.cpu_kernels import available


def isa_targets() -> list[str]:
    """This CPU's build, plus (on x86-64 with g++) the AVX2-only and no-SIMD builds, so the
    portable fallbacks of intrinsics code are checked on any machine; none without the kernels."""
    if available(torch.device("cpu")) is not None:
        return []
    targets = ["native"]
    if platform.machine() in ("x86_64", "AMD64") and shutil.which(os.environ.get("CXX", "g++")):
        targets += ["x86-64-v3", "x86-64"]
    return targets
