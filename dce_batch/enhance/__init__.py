"""dce_batch.enhance."""
