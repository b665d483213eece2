"""The pipeline's stages in order, each as its function and arguments: the one list that the
Prefect flow and the benchmark run (dvc.yaml names the same stages; a test checks the order)."""

from collections.abc import Callable

from tasks import distill, export, ingest, prune, publish, quantize, report, train_teachers, validate
from tasks.config import PipelineParams
from tasks.layout import Layout

STAGES = ("ingest", "validate", "train_teachers", "distill", "prune", "quantize", "export", "report", "publish")


def stage_calls(params: PipelineParams, layout: Layout) -> dict[str, tuple[Callable, tuple]]:
    """Each stage's function and arguments, keyed by the stage name dvc.yaml uses."""
    return {
        "ingest": (ingest.run, (params.ingest, layout)),
        "validate": (validate.run, (params.validate_, layout)),
        "train_teachers": (train_teachers.run, (params.teachers, layout)),
        "distill": (distill.run, (params.distill, params.kd, params.ship, layout)),
        "prune": (prune.run, (params.prune, params.kd, params.ship, layout)),
        "quantize": (quantize.run, (params.quantize, params.kd, layout)),
        "export": (export.run, (params.export, layout)),
        "report": (report.run, (params.report, params, layout)),
        "publish": (publish.run, (params.publish, layout)),
    }
