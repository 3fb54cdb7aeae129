"""Shared fixtures. Every cluster and I/O loop a test starts is stopped by its fixture, pass or fail."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from actors import LocalCluster
from actors.ioloop import IOLoop


@pytest.fixture
def loop() -> Iterator[IOLoop]:
    """An I/O loop of its own, stopped (thread ended) after the test."""
    io = IOLoop("test")
    try:
        yield io
    finally:
        io.stop()
    assert not io.alive


@pytest.fixture
def make_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """Start clusters inside a test: ``make_cluster(nodes=5, n=3)``; all are stopped afterwards."""
    started: list[LocalCluster] = []

    def make(**kwargs: object) -> LocalCluster:
        kwargs.setdefault("data_dir", tmp_path_factory.mktemp("cluster"))
        cluster = LocalCluster(**kwargs)  # type: ignore[arg-type]
        started.append(cluster)
        return cluster.start()

    try:
        yield make
    finally:
        for cluster in started:
            cluster.stop()


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One healthy 5-node cluster for the tests of a module that do not break it."""
    with LocalCluster(nodes=5, n=3, r=2, w=2, data_dir=tmp_path_factory.mktemp("shared")) as cluster:
        yield cluster
