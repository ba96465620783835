"""Replica-batched training: optimisers, the loop, and the resumable run driver."""
