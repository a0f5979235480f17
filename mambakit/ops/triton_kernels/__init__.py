"""@triton.jit kernels. Importing anything here imports triton: only ops/*_triton.py do, lazily."""
