"""Which student ships, and why: the ship stage's record, which the report, package and publish stages read."""

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from distillery.errors import DistilleryError
from distillery.files import atomic_file


class ShipDecision(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: Literal["pruned", "int8"] | None  # None: no student meets the floor, nothing ships
    reason: str
    temperature: float | None  # the shipped model's, fitted on the validation split; the package builds it in
    floor_val_accuracy: float
    val_accuracy: dict[str, float]  # the ensemble's and each deployable student's, in onnxruntime
    latency_batch: int
    latency_margin: float
    latency_ms_rounds: dict[str, list[float]]  # each deployable student's interleaved timing rounds
    best_latency_ms: dict[str, float]

    @model_validator(mode="after")
    def a_shipped_model_has_a_temperature(self):
        if (self.model is None) != (self.temperature is None):
            raise ValueError("a temperature is given exactly when a model ships")
        return self

    @property
    def headline_model(self) -> str:
        """The model the headline figures describe: the shipped one, or the int8 one when none ships."""
        return self.model or "int8"

    def write(self, path: Path) -> None:
        with atomic_file(path) as tmp:
            tmp.write_text(self.model_dump_json(indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> "ShipDecision":
        if not path.exists():
            raise DistilleryError(f"{path} is missing; run the ship stage first.")
        try:
            return cls.model_validate_json(path.read_text())
        except ValidationError as e:
            raise DistilleryError(
                f"{path} is not a ship decision ({e.error_count()} problems); rerun the ship stage."
            ) from e
