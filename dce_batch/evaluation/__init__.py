"""dce_batch.evaluation."""
