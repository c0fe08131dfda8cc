"""The background trainer's stages: time stages (doubled minutes) for a time-budgeted run without an epoch cap,
epoch stages otherwise; each stage's line says its budget and the epochs it did."""

from __future__ import annotations

from service.launch.improve import next_stage, stage_line


def test_a_time_budgeted_run_gets_time_stages_and_an_epoch_count_gets_epoch_stages():
    assert next_stage({"minutes": 4.0, "epochs": 0}, 13.4, 200) == {"minutes": 8.0}
    assert next_stage({"minutes": 8.0, "epochs": 0}, 30.0, 200) == {"minutes": 16.0}
    assert next_stage({"minutes": 4.0, "epochs": 3}, 3.0, 200) == {"epochs": 6}  # an epoch cap: epoch stages
    assert next_stage({"minutes": 0.0, "epochs": 200}, 150, 200) == {"epochs": 200}


def test_a_stage_line_names_the_budget_and_the_epochs_done():
    job = {"state": "succeeded", "version": "v000004", "metrics": {
        "train_config": {"minutes": 8.0, "epochs": 0}, "epochs": 27.31, "epochs_planned": 26.5, "published": True,
        "quality": {"self_top1": 61.0}, "live_quality": {"self_top1": 55.5}, "knn": {"top1@200": 48.2}}}
    assert stage_line(job, 200) == ("8 min, epoch 27.31/200 (planned 26.5): self-retrieval top-1 61.0% (live "
                                    "55.5%), kNN top-1 48.2%: published version v000004")


def test_the_first_versions_bar_counts_down_the_jobs_own_deadline():
    from service.launch.progress import postfix

    assert postfix({"phase": "training", "eta_s": 193.4, "loss": 7.5912, "images_per_s": 1523.7}) == \
        ", 3:13 left, loss 7.591, 1524 images/s"
    assert postfix({"phase": "loading"}) == ""
