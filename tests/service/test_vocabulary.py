"""Each vocabulary is defined once and the API's schema shows exactly it: job kinds, states and phases, objectives,
stems and backbones of a train request, version kinds and origins."""

from __future__ import annotations

from typing import get_args

from index import ListedKind, OriginKind
from service.api.app import create_app
from service.jobs.vocabulary import FINISHED, PHASES, JobKind, JobState, Phase
from trainer.config import Objective, Stem
from trainer.model import Backbone
from trainer.progress import TrainPhase


def enum(schema: dict, model: str, field: str) -> set[str]:
    prop = schema["components"]["schemas"][model]["properties"][field]
    options = prop.get("anyOf", [prop])
    return {v for o in options for v in o.get("enum", [])}


def test_every_phase_is_described_in_order_trainer_phases_first():
    assert list(PHASES) == list(get_args(Phase))
    assert list(get_args(Phase))[: len(get_args(TrainPhase))] == list(get_args(TrainPhase))
    assert set(FINISHED) < set(get_args(JobState))


def test_the_openapi_schema_lists_the_vocabularies(make_settings):
    schema = create_app(make_settings()).openapi()
    assert enum(schema, "JobOut", "state") == set(get_args(JobState))
    assert enum(schema, "JobOut", "kind") == set(get_args(JobKind))
    assert all(p in schema["components"]["schemas"]["JobOut"]["properties"]["phase_description"]["description"]
               for p in PHASES)
    assert enum(schema, "TrainOverrides", "objective") == set(get_args(Objective))
    assert enum(schema, "TrainOverrides", "stem") == set(get_args(Stem))
    assert enum(schema, "TrainOverrides", "backbone") == set(get_args(Backbone))
    assert enum(schema, "VersionEntry", "kind") == set(get_args(ListedKind))
    assert enum(schema, "VersionEntry", "origin") == set(get_args(OriginKind))
