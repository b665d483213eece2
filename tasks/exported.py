"""The export stage's ONNX files, used only while they are the files it verified: a file changed
after the export (tampered, truncated, swapped) is refused before anything measures or publishes it."""

from pathlib import Path

from distillery.errors import DistilleryError
from distillery.files import file_digest
from tasks.layout import Layout
from tasks.runtime import read_json

VERIFICATION = "verification.json"


def onnx_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every ONNX file in `folder`, by file name."""
    return {p.name: file_digest(p) for p in sorted(folder.glob("*.onnx"))}


def verified_onnx(layout: Layout) -> dict[str, Path]:
    """The exported models by name, after checking each against the sha256 the export stage recorded."""
    verification = layout.export / VERIFICATION
    if not verification.exists():
        raise DistilleryError(f"{verification} is missing; run the export stage first.")
    record = read_json(verification)
    if not record["passed"]:
        raise DistilleryError("The export did not pass verification; rerun the export stage.")
    if "sha256" not in record:
        raise DistilleryError(f"{verification} records no file hashes (an older export); rerun the export stage.")
    found = onnx_hashes(layout.export)
    changed = sorted(
        name for name in record["sha256"].keys() | found.keys() if record["sha256"].get(name) != found.get(name)
    )
    if changed:
        raise DistilleryError(
            f"ONNX files in {layout.export} differ from what the export stage verified: {', '.join(changed)} "
            "(changed, added or missing since). Rerun the export stage."
        )
    return {Path(name).stem: layout.export / name for name in found}
