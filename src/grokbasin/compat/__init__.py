"""Drop-in replacements for other LLC libraries' entry points, backed by the batched sampler."""
