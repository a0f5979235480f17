"""File formats of models and their state, below the models that use them (they know configs and
state dicts, not model classes): checkpoint directories in our, transformers' and mamba_ssm's
layouts, and recurrent-state files. Built on the leaf helpers of `mambakit.io`."""
