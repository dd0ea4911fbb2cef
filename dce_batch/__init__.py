"""dce_batch: Zero-DCE low-light enhancement at scale on Ray.

The pure pieces (no Ray): :mod:`~dce_batch.enhance.network` (DCE-Net and the fast variant),
:mod:`~dce_batch.training.losses`, :mod:`~dce_batch.enhance.weights`, :mod:`~dce_batch.enhance.enhancer`,
:mod:`~dce_batch.imaging`, :mod:`~dce_batch.storage`, :mod:`~dce_batch.job.manifest`.
The Ray layers: :mod:`~dce_batch.job.driver` (enhancement job) and :mod:`~dce_batch.training.run`.
"""

from dce_batch._version import __version__

__all__ = ["__version__", "enhance_batch", "enhance_image", "models"]


def __getattr__(name: str):
    # Lazy (PEP 562): `import dce_batch` stays light (no torch) until one of these is used.
    if name in ("enhance_image", "enhance_batch"):
        from dce_batch import models

        return getattr(models, name)
    if name == "models":
        import importlib

        return importlib.import_module(".models", __name__)
    raise AttributeError(f"module 'dce_batch' has no attribute {name!r}")
