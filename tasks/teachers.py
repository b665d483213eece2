"""Loading the trained teacher ensemble, for the stages that distil from it."""

from distillery import checkpoint
from distillery.errors import DistilleryError
from distillery.models import Ensemble
from tasks.layout import Layout


def load_ensemble(layout: Layout) -> Ensemble:
    files = sorted(layout.teachers.glob("*.safetensors"))
    if not files:
        raise DistilleryError(f"No teacher checkpoints in {layout.teachers}; run the train_teachers stage first.")
    return Ensemble([checkpoint.load(f)[0] for f in files]).eval()
