"""The gate's decision and the job request parsing, as pure functions."""

from __future__ import annotations

from service.jobs.promotion import decide
from service.jobs.warmstart import JobRequest


def q(top1: float) -> dict:
    return {"self_top1": top1}


def test_gate_publishes_when_not_worse_and_keeps_the_live_one_otherwise():
    assert decide(q(50), None, "if_better").publish
    assert decide(q(50), q(50), "if_better").publish  # equal is not worse
    kept = decide(q(49.9), q(50), "if_better")
    assert not kept.publish and "49.90 < live 50.00" in kept.reason
    assert decide(q(10), q(50), "always").publish
    assert not decide(q(50.5), q(50), "if_better", margin=1.0).publish
    assert decide(q(51), q(50), "if_better", margin=1.0).publish


def test_job_request_splits_start_and_publish_from_config_overrides():
    r = JobRequest.of({"init": "live", "publish": "always", "epochs": 3})
    assert (r.init, r.publish, r.extend, r.overrides) == ("live", "always", None, {"epochs": 3})
    assert JobRequest.of({}) == JobRequest()
