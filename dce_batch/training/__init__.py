"""Training DCE-Net on Ray Train (``dce-batch train``), one module per concern:

* :mod:`~dce_batch.training.config`: :class:`TrainConfig`, the settings of a run;
* :mod:`~dce_batch.training.data`: decoding and augmenting images (plain functions, no Ray);
* :mod:`~dce_batch.training.datasets`: listing, the train/validation split, Ray Data decoding;
* :mod:`~dce_batch.training.losses`: Zero-DCE's four non-reference losses;
* :mod:`~dce_batch.training.loop`: the loop each Ray Train worker runs;
* :mod:`~dce_batch.training.progress`: the driver's per-epoch lines;
* :mod:`~dce_batch.training.results`: ``metrics.json``, the loss curves, the weights export;
* :mod:`~dce_batch.training.run`: :func:`run_training`, the driver that joins them.
"""

from dce_batch.training.config import TrainConfig
from dce_batch.training.run import TrainingOutcome, run_training

__all__ = ["TrainConfig", "TrainingOutcome", "run_training"]
