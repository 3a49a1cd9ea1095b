"""Seeded model builds are the same in every thread (core.rng.seeded_build)."""

from __future__ import annotations

import threading

import torch

from fedweave.config import load_config
from fedweave.core.params import FlatModel
from fedweave.experiment import build_experiment


def test_a_seeded_model_build_is_the_same_when_threads_build_at_once():
    """A loopback deployment builds the server's and every client's model in threads of
    one process. Initialisation draws from torch's global generator, so without the build
    lock two builds interleave their draws; FRL's frozen supermask weights (never sent)
    then differed between client and server. Four threads × 10 builds of the FRL model
    must all equal a build made alone."""
    exp = build_experiment(load_config({"method": {"name": "frl"}, "model": {"name": "mlp", "hidden": [64, 64]}}))
    reference = FlatModel(exp.model_factory()).flat.clone()
    built, start = [], threading.Barrier(4)

    def build():
        start.wait()
        for _ in range(10):
            built.append(FlatModel(exp.model_factory()).flat.clone())

    threads = [threading.Thread(target=build) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 40 and all(torch.equal(f, reference) for f in built)


def test_a_job_starting_in_another_thread_does_not_reseed_a_build_in_progress():
    """A loopback deployment's clients start jobs (reseeding torch's global generator for
    dropout and the like) while a client that joined late is still building its model:
    the job seeding waits for the build lock, so the build comes out as if alone."""
    from fedweave.core.rng import seed_job_generators

    exp = build_experiment(load_config({"method": {"name": "frl"}, "model": {"name": "mlp", "hidden": [64, 64]}}))
    reference = FlatModel(exp.model_factory()).flat.clone()
    built, done = [], threading.Event()

    def jobs():
        counter = 0
        while not done.is_set():
            seed_job_generators(0, 1, counter, torch.device("cpu"))
            counter += 1

    seeder = threading.Thread(target=jobs)
    seeder.start()
    try:
        for _ in range(20):
            built.append(FlatModel(exp.model_factory()).flat.clone())
    finally:
        done.set()
        seeder.join()
    assert all(torch.equal(f, reference) for f in built)
