"""`distillery predict`: the classes of image files, as a table, JSON or CSV on stdout."""

import argparse
import csv
import json
import sys

from distillery import images, model_package
from distillery.errors import DistilleryError
from project.predict import Predictions, classify, resolve_model
from project.user_errors import user_errors


def rows(predictions: Predictions, classes: list[str], k: int) -> list[dict]:
    """One row per image: its path, then each of its `k` most probable classes with its probability."""
    order, probabilities = predictions.top(k)
    found = []
    for path, indices, chances in zip(predictions.files, order, probabilities, strict=True):
        row = {"image": str(path)}
        for rank, (index, chance) in enumerate(zip(indices, chances, strict=True), start=1):
            suffix = "" if rank == 1 else f"_{rank}"
            row |= {f"class{suffix}": classes[index], f"probability{suffix}": f"{chance:.4f}"}
        found.append(row)
    return found


def as_table(found: list[dict]) -> str:
    """The rows as aligned columns under a header."""
    header = list(found[0]) if found else ["image", "class", "probability"]
    widths = [max([len(h)] + [len(r[h]) for r in found]) for h in header]
    lines = [header] + [[r[h] for h in header] for r in found]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines)


def as_json(predictions: Predictions, classes: list[str], k: int) -> str:
    order, probabilities = predictions.top(k)
    return json.dumps(
        [
            {
                "image": str(path),
                "predictions": [
                    {"class": classes[i], "index": int(i), "probability": float(p)}
                    for i, p in zip(indices, chances, strict=True)
                ],
            }
            for path, indices, chances in zip(predictions.files, order, probabilities, strict=True)
        ],
        indent=2,
    )


def predict(args: argparse.Namespace) -> None:
    with user_errors(args.debug):
        model = model_package.read(resolve_model(args.model, args.root.resolve()))
        files = images.image_files(args.paths)
        if not files:
            raise DistilleryError(f"No PNG, JPEG or TIFF images in {', '.join(map(str, args.paths))}.")
        predictions = classify(model, files, batch_size=args.batch_size)
    k = min(args.top_k, len(model.classes))
    if predictions.converted:
        spec = model.input
        print(
            f"note: {predictions.converted} of {len(files)} images converted to {spec.color} and/or resized to "
            f"{spec.height}x{spec.width} ({spec.resample}), as {model.path.name}'s metadata asks",
            file=sys.stderr,
        )
    if args.format == "json":
        print(as_json(predictions, model.classes, k))
    elif args.format == "csv":
        found = rows(predictions, model.classes, k)
        writer = csv.DictWriter(sys.stdout, fieldnames=list(found[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(found)
    else:
        print(as_table(rows(predictions, model.classes, k)))
