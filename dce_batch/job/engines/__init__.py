"""dce_batch.job.engines."""
