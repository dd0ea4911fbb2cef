"""The enhancement job: storage -> decode -> enhance -> encode -> storage -> manifest, at scale.

* :mod:`.config`: :class:`EnhanceConfig`, every setting validated before anything starts;
* :mod:`.output_settings`: what determines an output's pixels (what resume compares);
* :mod:`.plan`: output names, refusals and resume, columnar;
* :mod:`.sizing`: how many workers, with what memory (per call);
* :mod:`.steps`: read + decode, enhance, encode + atomic write, per image, no Ray;
* :mod:`.worker`: one worker: the model loaded once, batches in, rows into rolling parts;
* :mod:`.engines`: :mod:`~.engines.local` (worker processes) and :mod:`~.engines.ray` (Ray Data);
* :mod:`.manifest`: the Parquet manifest, its commit records and the lease;
* :mod:`.driver`: :func:`run_enhance`, which wires them; :mod:`.signals`, :mod:`.progress`.
"""

from dce_batch.job.config import DEFAULT_OUTPUT, EnhanceConfig, sample_images_dir

__all__ = ["DEFAULT_OUTPUT", "EnhanceConfig", "run_enhance", "sample_images_dir"]


def run_enhance(config: EnhanceConfig, **kwargs):
    """See :func:`dce_batch.job.driver.run_enhance`."""
    from dce_batch.job.driver import run_enhance as run

    return run(config, **kwargs)
