"""dce_batch.report."""
