"""Pictures of real models and ops (matplotlib, Agg canvas: no display needed)."""
