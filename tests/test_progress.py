"""Issue 11, case 10: long evaluation loops report progress at least every ``interval`` seconds, and say where the
outputs went."""

from __future__ import annotations

from ignite.engine import Engine

from fanet_monai.progress import ProgressLogger


def test_a_line_at_least_every_interval_and_a_summary():
    now = [0.0]

    def step(engine, batch):
        now[0] += 4.0  # each batch takes 4 s

    engine = Engine(step)
    progress = ProgressLogger("inference", interval=10.0, done="masks written to out/", clock=lambda: now[0])
    progress.attach(engine)
    engine.run(range(10), max_epochs=1)
    assert progress.lines[:3] == [
        "inference: 3/10 batches (30 %), 12 s elapsed, ~28 s left",
        "inference: 6/10 batches (60 %), 24 s elapsed, ~16 s left",
        "inference: 9/10 batches (90 %), 36 s elapsed, ~4 s left",
    ]
    assert progress.lines[-1] == "inference: 10 batches done in 40.0 s; masks written to out/"


def test_a_short_loop_prints_only_the_summary_each_run():
    engine = Engine(lambda e, b: None)
    progress = ProgressLogger("validation", interval=10.0)
    progress.attach(engine)
    engine.run(range(3), max_epochs=1)
    engine.run(range(3), max_epochs=1)  # an evaluator runs once per validation
    assert [line.split(" in ")[0] for line in progress.lines] == ["validation: 3 batches done"] * 2
