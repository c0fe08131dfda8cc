"""The thread tuner follows the load: it keeps fewer threads while a core is taken and goes back when it frees."""

from __future__ import annotations

from trainer.threads import ThreadTuner


class Machine:
    """A 2-core machine whose step time depends on the thread count and on whether a core is taken."""

    def __init__(self):
        self.t, self.threads, self.busy = 0.0, 2, False

    def step(self) -> None:
        # idle: 2 threads 0.6 s a step, 1 thread 1.0 s; a core taken: 2 threads stall (2.0 s), 1 thread 1.0 s
        self.t += {(2, False): 0.6, (1, False): 1.0, (2, True): 2.0, (1, True): 1.0}[(self.threads, self.busy)]

    def set_threads(self, n: int) -> None:
        self.threads = n


def run(tuner: ThreadTuner, machine: Machine, steps: int) -> list[int]:
    seen = []
    for _ in range(steps):
        machine.step()
        tuner.step_done(32)
        seen.append(machine.threads)
    return seen


def test_the_tuner_drops_a_thread_while_a_core_is_taken_and_takes_it_back_after():
    m = Machine()
    tuner = ThreadTuner(2, probe_every_s=10, window_s=1.0, min_steps=2, clock=lambda: m.t,
                        set_threads=m.set_threads)
    assert set(run(tuner, m, 40)) == {1, 2} and tuner.threads == 2  # idle: probes of 1 thread lose
    m.busy = True
    run(tuner, m, 40)
    assert tuner.threads == 1 and m.threads in (1, 2)  # busy: 1 thread wins (probes of 2 may be running)
    m.busy = False
    run(tuner, m, 60)
    assert tuner.threads == 2  # idle again: 2 threads win back


def test_one_core_never_probes():
    m = Machine()
    m.threads = 1
    tuner = ThreadTuner(1, probe_every_s=0, clock=lambda: m.t, set_threads=m.set_threads)
    assert set(run(tuner, m, 30)) == {1}
