"""Validate: a great-expectations checkpoint over the per-image facts and per-class counts.

Writes data/validation/ (summary.json and Data Docs HTML) whether or not the data passes,
then stops the pipeline with a message naming every failed expectation if it does not.
"""

import logging
import os

import pandas as pd

from distillery.errors import DistilleryError
from distillery.files import atomic_dir, read_json, write_json
from distillery.raw_format import SPLIT_NAMES, UNLABELED_SPLIT
from project.config import ValidateConfig
from project.layout import Layout
from project.stage import Stage

log = logging.getLogger("distillery")


def class_table(facts: pd.DataFrame, num_classes: int) -> pd.DataFrame:
    """One row per class id 0..num_classes-1: image counts per split and share of the largest class."""
    counts = facts.groupby(["label", "split"]).size().unstack(fill_value=0)
    counts = counts.reindex(index=range(num_classes), columns=["train", "val", "test"], fill_value=0)
    table = counts.add_prefix("n_").reset_index().rename(columns={"index": "label"})
    table["n_images"] = table[["n_train", "n_val", "n_test"]].sum(axis=1)
    table["share_of_largest"] = table["n_images"] / max(table["n_images"].max(), 1)
    return table


def image_expectations(gx, facts: pd.DataFrame, num_classes: int) -> list:
    from great_expectations.expectations.row_conditions import Column

    E = gx.expectations
    first = facts.iloc[0]
    labelled = Column("split") != SPLIT_NAMES[UNLABELED_SPLIT]  # the rows whose label is a class
    return [
        E.ExpectColumnValuesToBeInSet(column="label", value_set=list(range(num_classes)), row_condition=labelled),
        E.ExpectColumnDistinctValuesToBeInSet(column="split", value_set=list(SPLIT_NAMES)),
        E.ExpectColumnValuesToBeBetween(column="pixel_min", min_value=0, max_value=255),
        E.ExpectColumnValuesToBeBetween(column="pixel_max", min_value=0, max_value=255),
        E.ExpectColumnValuesToBeInSet(column="non_finite", value_set=[0]),
        E.ExpectColumnValuesToBeInSet(column="channels", value_set=[int(first.channels)]),
        E.ExpectColumnValuesToBeInSet(column="height", value_set=[int(first.height)]),
        E.ExpectColumnValuesToBeInSet(column="width", value_set=[int(first.width)]),
        E.ExpectColumnValuesToBeUnique(column="sha256"),
        E.ExpectColumnValuesToNotBeNull(column="pixel_mean"),
    ]


def class_expectations(gx, config: ValidateConfig, num_classes: int) -> list:
    E = gx.expectations
    return [
        E.ExpectTableRowCountToBeBetween(min_value=2, max_value=None),
        E.ExpectColumnValuesToBeBetween(column="n_images", min_value=config.min_images_per_class),
        E.ExpectColumnValuesToBeBetween(column="n_test", min_value=1),
        E.ExpectColumnValuesToBeBetween(column="n_val", min_value=1),
        E.ExpectColumnValuesToBeBetween(column="share_of_largest", min_value=1 / config.max_class_imbalance),
    ]


MEANING = {  # what a failed expectation on each column says about the data, in plain words
    "label": "labels outside 0..classes-1",
    "pixel_min": "pixels below 0",
    "pixel_max": "pixels above 255",
    "non_finite": "NaN or infinite pixels",
    "channels": "images with another channel count",
    "height": "images of another height",
    "width": "images of another width",
    "sha256": "duplicate images (a copy in two splits, or in the transfer set, leaks test data into training)",
    "n_images": "a class with fewer images than validate.min_images_per_class",
    "n_test": "a class with no test image",
    "n_val": "a class with no validation image",
    "share_of_largest": "classes more imbalanced than validate.max_class_imbalance",
    None: "fewer than two classes",
}


def describe_failure(result) -> str:
    """`meaning — expectation(column): observed/offending values` for one failed expectation."""
    cfg = result.expectation_config
    column = cfg.kwargs.get("column")
    details = result.result or {}
    if details.get("partial_unexpected_list"):
        shown = details["partial_unexpected_list"][:5]
        found = f"{details.get('unexpected_count')} offending rows, e.g. {shown}"
    else:
        found = f"observed {details.get('observed_value')!r}"
    return f"{MEANING.get(column, 'failed')} — {cfg.type}({column or ''}): {found}"


def run_checkpoint(tables: dict[str, tuple[pd.DataFrame, list]], docs_dir) -> tuple[bool, list[str]]:
    """Validate each table against its expectations in one GX context; build Data Docs in `docs_dir`."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}
    context.delete_data_docs_site("local_site")
    context.add_data_docs_site(
        "local_site",
        {
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    source = context.data_sources.add_pandas("distillery")
    failures: list[str] = []
    for name, (frame, expectations) in tables.items():
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
        suite = context.suites.add(gx.ExpectationSuite(name=f"{name}_suite", expectations=expectations))
        definition = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=f"{name}_checkpoint",
                validation_definitions=[definition],
                actions=[gx.checkpoint.UpdateDataDocsAction(name="docs")],
                result_format="SUMMARY",
            )
        )
        result = checkpoint.run(batch_parameters={"dataframe": frame})
        for run in result.run_results.values():
            failures += [f"{name}: {describe_failure(r)}" for r in run.results if not r.success]
    return not failures, failures


def duplicates_by_split(facts: pd.DataFrame) -> str:
    """Where the duplicate images are, e.g. `3 in test and unlabeled`: the splits each image's copies are in."""
    copies = facts[facts["sha256"].duplicated(keep=False)]
    places = copies.groupby("sha256")["split"].agg(lambda splits: " and ".join(sorted(set(splits)))).value_counts()
    return ", ".join(f"{count} in {where}" for where, count in places.items())


def run(config: ValidateConfig, layout: Layout) -> dict:
    """Check data/raw/ and write data/validation/; raise if any expectation fails."""
    if not layout.facts.exists():
        raise DistilleryError(f"Facts table {layout.facts} does not exist; run the ingest stage first.")
    facts = pd.read_csv(layout.facts)
    if facts.empty:
        raise DistilleryError(f"{layout.facts} lists no images.")
    num_classes = len(read_json(layout.dataset_info)["classes"])
    classes = class_table(facts, num_classes)
    with atomic_dir(layout.validation) as out:
        import great_expectations as gx

        tables = {
            "images": (facts, image_expectations(gx, facts, num_classes)),
            "classes": (classes, class_expectations(gx, config, num_classes)),
        }
        success, failures = run_checkpoint(tables, out / layout.data_docs.name)
        summary = {
            "success": success,
            "failures": failures,
            "images": len(facts),
            "classes": num_classes,
            "docs": str(layout.data_docs_index.relative_to(layout.validation)),
        }
        write_json(out / layout.validation_summary.name, summary)
    if not success:
        duplicates = duplicates_by_split(facts)
        raise DistilleryError(
            f"Data validation failed ({len(failures)} expectation(s)); no training was run. "
            + " | ".join(failures)
            + (f". Images with copies, by the splits they are in: {duplicates}" if duplicates else "")
            + f". Data Docs: {layout.data_docs_index}"
        )
    log.info("validation passed: %d images, %d classes", len(facts), num_classes)
    return summary


STAGE = Stage(run, reads=(Layout.raw,), writes=(Layout.validation,))

if __name__ == "__main__":
    from project.stage_cli import main

    main(STAGE)
