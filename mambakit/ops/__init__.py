"""Pure tensor functions (no nn.Module state): scans, convolutions, discretization, kernels."""
# Importing these registers the scan's "parallel", "cpu" and "triton" backends, the decode step's
# "cpu" and "triton" backends (the C++ kernels compile lazily; triton is imported only when a
# triton backend runs) and SSD's "quadratic", "chunked", "cpu" and "triton" ones.
from mambakit.ops import (  # noqa: F401,E402
    scan_cpu,
    scan_parallel,
    scan_triton,
    ssd_chunked,
    ssd_cpu,
    ssd_triton,
    step_cpu,
    step_triton,
)
from mambakit.ops.conv import causal_conv1d, causal_conv1d_step, causal_conv1d_step_ref
from mambakit.ops.cross_entropy import linear_cross_entropy, linear_cross_entropy_ref
from mambakit.ops.discretize import ContinuousSSM, bilinear, bilinear_diag, simulate, zoh, zoh_diag
from mambakit.ops.hippo import dplr_legs_half, hippo_legs, hippo_legt, nplr_legs, reconstruction_demo
from mambakit.ops.linear import linear, linear_ref
from mambakit.ops.scan import (
    ScanBackend,
    available_backends,
    register_backend,
    selective_scan,
    selective_scan_ref,
)
from mambakit.ops.ssd import available_ssd_backends, register_ssd_backend, ssd_scan, ssd_scan_ref, ssd_step
from mambakit.ops.ssm_kernel import (
    causal_conv_fft,
    causal_conv_ref,
    dplr_kernel,
    ssm_kernel_naive,
    ssm_recurrent,
    ssm_step,
    vandermonde_kernel,
)
from mambakit.ops.state_update import (
    available_state_update_backends,
    register_state_update_backend,
    selective_state_update,
    selective_state_update_ref,
)

__all__ = [
    "selective_scan", "selective_scan_ref", "register_backend", "available_backends", "ScanBackend",
    "ssd_scan", "ssd_scan_ref", "ssd_step", "register_ssd_backend", "available_ssd_backends",
    "selective_state_update", "selective_state_update_ref", "register_state_update_backend",
    "available_state_update_backends", "linear", "linear_ref", "linear_cross_entropy", "linear_cross_entropy_ref",
    "causal_conv1d", "causal_conv1d_step", "causal_conv1d_step_ref",
    "ContinuousSSM", "zoh", "zoh_diag", "bilinear", "bilinear_diag", "simulate",
    "hippo_legs", "hippo_legt", "nplr_legs", "dplr_legs_half", "reconstruction_demo",
    "ssm_step", "ssm_recurrent", "ssm_kernel_naive", "causal_conv_ref", "causal_conv_fft",
    "vandermonde_kernel", "dplr_kernel",
]
