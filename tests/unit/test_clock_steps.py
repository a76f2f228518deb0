"""clocks.StepWatch: a step back of this machine's clock is noticed and said once."""

from __future__ import annotations

import structlog.testing

from cryptostream import clocks


class Hands:
    """A wall and a monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.wall = 1_800_000_000.0
        self.mono = 500.0

    def tick(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


def test_a_step_back_is_said_once_and_slewing_or_sleep_is_not_a_step() -> None:
    hands = Hands()
    watch = clocks.StepWatch(lambda: hands.wall, lambda: hands.mono)
    with structlog.testing.capture_logs() as logs:
        assert watch.now() == hands.wall
        hands.tick(20)
        hands.wall -= 0.4  # NTP slewing a little: not a step
        assert watch.check(hands.wall, hands.mono) == 0.0
        hands.wall += 7200  # a laptop asleep: the wall clock ran, the monotonic one not
        assert watch.check(hands.wall, hands.mono) == 0.0
        hands.tick(20)
        hands.wall -= 3600  # the correction
        assert round(watch.now()) == round(hands.wall)
        for _ in range(5):  # after the step, time goes on as usual
            hands.tick(20)
            watch.now()
    steps = [e for e in logs if e["event"] == "clock_stepped_back"]
    assert [round(e["by_s"]) for e in steps] == [3600]
    assert steps[0]["log_level"] == "warning"
    assert watch.steps == 1
