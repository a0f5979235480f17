"""Device helpers shared by the Triton kernels."""
import triton
import triton.language as tl


def inline_when_interpreted(jit_fn):
    """A @triton.jit device function as is — except under the interpreter, where it is called as
    the interpreter's own rewritten Python function: the interpreter re-patches triton.language on
    every @jit call (~3 ms), which would otherwise dominate the tests' run time (same semantics;
    triton 3.9's interpreter API, left as is where that API differs)."""
    rewrite = getattr(jit_fn, "rewrite", None)
    return rewrite() if type(jit_fn).__name__ == "InterpretedFunction" and rewrite else jit_fn


row_sum = inline_when_interpreted(tl.sum)  # tl.sum, called as a function


@inline_when_interpreted
@triton.jit
def softplus(x):
    """(softplus(x), its derivative sigmoid(x)), with torch's threshold: the identity above 20
    (which also keeps exp finite)."""
    e = tl.exp(tl.minimum(x, 20.0))
    return tl.where(x > 20.0, x, tl.log(1.0 + e)), e / (1.0 + e)
