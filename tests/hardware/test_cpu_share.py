"""The CPU sharing rule between Serve replicas and training runs (pure, no Ray)."""

from __future__ import annotations

import pytest

from qlp_ray.hardware.cpu_share import place_training, share_serving

DEFAULT = {"compositor": (1.0, 1), "router": (0.5, 1)}  # serve.*_num_cpus defaults


def test_two_cpus_serving_shrinks_so_one_training_worker_fits():
    share = share_serving(DEFAULT, cluster_cpus=2, training_slot=1.0)
    assert share.cpus == {"compositor": pytest.approx(0.666, abs=1e-3), "router": 0.333}
    assert sum(share.cpus.values()) <= 1.0  # never eats into the slot
    assert share.cpus["compositor"] / share.cpus["router"] == pytest.approx(2, rel=1e-2)
    assert share.kept_for_training == 1.0
    assert share.reason == (
        "2 CPUs: serving reserves 1 (compositor 0.67, router 0.33; asked 1.5); "
        "1 CPU free for training"
    )
    # what Ray then has free: one worker of 1 CPU fits
    free = {"node": {"CPU": 2 - sum(share.cpus.values())}}
    assert place_training(1, 1.0, 0.0, free).workers == 1


@pytest.mark.parametrize("cpus", [8, 64])
def test_bigger_clusters_keep_the_configured_reservations(cpus):
    share = share_serving(DEFAULT, cluster_cpus=cpus, training_slot=1.0)
    assert share.cpus == {"compositor": 1.0, "router": 0.5}
    assert share.kept_for_training == cpus - 1.5
    assert share.reason.endswith(f"as configured; {cpus - 1.5:g} CPU free for training")


def test_replicas_count_and_no_slot_means_as_configured():
    two = share_serving({"compositor": (1.0, 2), "router": (0.5, 1)}, 2, 1.0)
    assert 2 * two.cpus["compositor"] + two.cpus["router"] <= 1.0
    assert share_serving(DEFAULT, 2, 0.0).cpus == {"compositor": 1.0, "router": 0.5}
    # one CPU, one training worker: serving reserves nothing (it still runs)
    assert share_serving(DEFAULT, 1, 1.0).cpus == {"compositor": 0.0, "router": 0.0}


def test_training_gets_the_workers_that_fit_across_nodes():
    free = {"a": {"CPU": 1.5}, "b": {"CPU": 3.0}}
    assert place_training(2, 1.0, 0.0, free).workers == 2
    assert place_training(8, 1.0, 0.0, free).workers == 4  # 1 on a, 3 on b
    assert place_training(2, 1.0, 0.0, free).node_grants == {"b": 2.0}  # freest node first
    assert place_training(8, 1.0, 0.0, free).node_grants == {"b": 3.0, "a": 1.0}
    assert place_training(2, 2.0, 0.0, free).workers == 1  # bundles do not span nodes
    gpu = place_training(2, 1.0, 1.0, {"a": {"CPU": 4, "GPU": 1}})
    assert gpu.workers == 1


def test_unplaceable_says_what_it_needs_what_is_free_and_who_holds_it():
    plan = place_training(
        1, 1.0, 0.0, {"n": {"CPU": 0.5}}, holders={"serve Compositor": 1.0, "serve Router": 0.5}
    )
    assert not plan.placed and plan.workers == 0
    assert plan.reason == (
        "needs 1 CPU per worker, 0.5 CPU free on the freest node; "
        "held by: serve Compositor 1, serve Router 0.5"
    )
    gpu = place_training(1, 1.0, 1.0, {"n": {"CPU": 2.0}})
    assert not gpu.placed and "1 CPU + 1 GPU per worker" in gpu.reason
