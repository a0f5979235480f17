"""train/memory.py: the glibc setting `mambakit train` makes so freed activation buffers leave RSS."""
import platform
import subprocess
import sys

import pytest

SCRIPT = """
import torch
from mambakit.train.memory import current_rss_bytes, return_freed_buffers_to_os
assert return_freed_buffers_to_os()
x = torch.ones(16 << 20, dtype=torch.uint8)   # 16 MB: glibc raises its threshold to this when freed
del x
y = torch.ones(4 << 20, dtype=torch.uint8)    # a block below glibc's raised threshold without the setting
before = current_rss_bytes()
del y
print(before - current_rss_bytes())
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_freed_large_buffers_go_back_to_the_os():
    """After a large block is freed glibc would serve a 4 MB one from its heap and keep it
    resident; with the setting the 4 MB block is unmapped when freed. (A fresh interpreter: the
    setting is process-wide.)"""
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, check=True)
    assert int(out.stdout.strip()) >= 3 << 20
