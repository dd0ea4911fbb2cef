"""dce_batch.training."""
