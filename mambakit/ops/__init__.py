"""Pure tensor functions (no nn.Module state): scans, convolutions, discretization, kernels."""
from mambakit.ops.conv import causal_conv1d, causal_conv1d_step
from mambakit.ops.scan import (
    ScanBackend, available_backends, register_backend, selective_scan, selective_scan_ref, selective_state_step,
)

__all__ = [
    "selective_scan", "selective_scan_ref", "register_backend", "available_backends", "ScanBackend",
    "causal_conv1d", "causal_conv1d_step", "selective_state_step",
]
