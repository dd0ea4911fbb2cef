"""dce_batch: Zero-DCE low-light enhancement at scale on Ray.

The pure pieces (no Ray): :mod:`~dce_batch.model` (DCE-Net and the fast variant),
:mod:`~dce_batch.losses`, :mod:`~dce_batch.weights`, :mod:`~dce_batch.inference`,
:mod:`~dce_batch.imageio`, :mod:`~dce_batch.storage`, :mod:`~dce_batch.manifest`.
The Ray layers: :mod:`~dce_batch.pipeline` (enhancement job) and :mod:`~dce_batch.training`.
"""

__version__ = "0.1.0"
