"""dce_batch.job."""
