"""Ship: which student ships, the fp32 pruned one or the int8 one, and the temperature its package builds in.

Of the two, those within the accuracy floor of the ensemble on the validation split; of two, the faster one on
this machine (`choose`). The decision is a typed record (`project.ship_decision.ShipDecision`) that the report,
package and publish stages read."""

import logging

from distillery import calibration, onnx_export
from distillery.data import Dataset, load_dataset
from distillery.evaluation import split_log_probabilities
from project.artifacts import verified_onnx
from project.config import MeasureConfig, ShipConfig
from project.layout import DEPLOYABLE, PROBABILITY_OUTPUTS, Layout
from project.ship_decision import ShipDecision
from project.stage import Stage

log = logging.getLogger("distillery")


def latency_rounds(paths: dict, data: Dataset, ship: ShipConfig, measure: MeasureConfig) -> dict[str, list[float]]:
    """The deployable models' latencies at `ship.latency_batch`, in interleaved rounds (see `choose`)."""
    return onnx_export.interleaved_latency_ms(
        {name: paths[name] for name in DEPLOYABLE},
        data.test.head(256).numpy(),
        batch=ship.latency_batch,
        rounds=ship.latency_rounds,
        budget_s=measure.latency_budget_s / ship.latency_rounds,
        threads=onnx_export.cpu_threads(measure.latency_threads),
    )


def choose(val_accuracy: dict[str, float], rounds: dict[str, list[float]], ship: ShipConfig) -> tuple[str | None, str]:
    """The deployable model and why. Of the fp32 and int8 student, those within the accuracy floor of the ensemble
    on the validation split; of two, the faster one (each model's best of its interleaved timing rounds on this
    machine, each round a fresh session: noise only adds time) if it is faster by at least `ship.latency_margin`
    (its best x (1 + margin) <= the other's, and strictly faster), else the one with the higher validation
    accuracy, and on equal accuracy the int8 one (the smaller file). Timing noise flips the choice only where the
    speed ratio sits at 1 + margin."""
    floor = ship.floor(val_accuracy["ensemble"])
    meeting = [m for m in DEPLOYABLE if val_accuracy[m] >= floor]
    best = {m: min(rounds[m]) for m in DEPLOYABLE}
    if not meeting:
        return None, (
            f"no model reaches the floor ({floor:.4f} val accuracy, ship.max_accuracy_drop_pp "
            f"{ship.max_accuracy_drop_pp} below the ensemble); nothing ships"
        )
    if len(meeting) == 1:
        return meeting[0], f"{meeting[0]} is the only model that meets the floor"
    fast, slow = sorted(meeting, key=best.get)
    speedup = best[slow] / best[fast]
    if speedup > 1 and speedup >= 1 + ship.latency_margin:
        return fast, f"both meet the floor; {fast} is {speedup:.2f}x faster at b{ship.latency_batch}"
    choice = max(reversed(DEPLOYABLE), key=val_accuracy.get)  # on a tie, int8: max keeps the first
    return choice, (
        f"both meet the floor and are within {ship.latency_margin:.0%} of each other at b{ship.latency_batch} "
        f"({speedup:.2f}x); {choice} has the higher validation accuracy"
        + (" (equal: int8, the smaller file)" if val_accuracy["pruned"] == val_accuracy["int8"] else "")
    )


def decide(
    val_accuracy: dict[str, float], rounds: dict[str, list[float]], ship: ShipConfig, temperatures: dict[str, float]
) -> ShipDecision:
    """The decision `choose` makes, with what it was made on and the shipped model's temperature."""
    model, reason = choose(val_accuracy, rounds, ship)
    return ShipDecision(
        model=model,
        reason=reason,
        temperature=temperatures[model] if model else None,
        floor_val_accuracy=ship.floor(val_accuracy["ensemble"]),
        val_accuracy={m: val_accuracy[m] for m in ("ensemble", *DEPLOYABLE)},
        latency_batch=ship.latency_batch,
        latency_margin=ship.latency_margin,
        latency_ms_rounds=rounds,
        best_latency_ms={m: min(rounds[m]) for m in DEPLOYABLE},
    )


def run(config: ShipConfig, measure: MeasureConfig, layout: Layout) -> dict:
    """Write data/ship.json: which student ships and why, measured on the verified ONNX files."""
    data = load_dataset(layout.raw)
    paths = verified_onnx(layout)
    val_y = data.val.y.numpy()
    val_accuracy, temperatures = {}, {}
    for name in ("ensemble", *DEPLOYABLE):
        log_p = split_log_probabilities(
            onnx_export.session(paths[name]), data.val, probabilities=name in PROBABILITY_OUTPUTS
        )
        val_accuracy[name] = float((log_p.argmax(axis=1) == val_y).mean())
        temperatures[name] = calibration.fit_temperature(log_p, val_y)
    decision = decide(val_accuracy, latency_rounds(paths, data, config, measure), config, temperatures)
    decision.write(layout.ship_decision)
    log.info("shipped: %s (%s)", decision.model, decision.reason)
    return {"shipped": decision.model, "reason": decision.reason}


STAGE = Stage(run, reads=(Layout.raw, Layout.export), metrics=(Layout.ship_decision,))  # `dvc metrics show` shows it

if __name__ == "__main__":
    from project.stage_cli import main

    main(STAGE)
