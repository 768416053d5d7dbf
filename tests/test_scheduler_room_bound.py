"""Preemption's quick check (``_could_make_room``) is an upper bound: whenever taking every
victim would let an app be placed, it says so. It prunes the victim search, so a False where
room could be made would leave an app waiting that preemption should serve.

Also: ``FreeIndex.free_gpu_counts`` counts the same nodes whatever the placement."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dlapp.scheduler import RunningApp
from dlapp.scheduler.placement import FreeIndex
from dlapp.scheduler.policy import _could_make_room

from builders import make_app, make_node, make_running


@st.composite
def clusters(draw: st.DrawFn) -> tuple[list, list[RunningApp]]:
    """Nodes of 2-8 GPUs (some drained), and running apps that hold whole GPUs on them."""
    sizes = draw(st.lists(st.integers(2, 8), min_size=1, max_size=6))
    drained = draw(st.lists(st.booleans(), min_size=len(sizes), max_size=len(sizes)))
    used = [0] * len(sizes)
    running: list[RunningApp] = []
    for i in range(draw(st.integers(0, 8))):
        gpus = draw(st.integers(1, 4))
        spots = draw(st.lists(st.integers(0, len(sizes) - 1), min_size=1, max_size=3))
        if any(used[n] + gpus * spots.count(n) > sizes[n] for n in set(spots)):
            continue
        for n in spots:
            used[n] += gpus
        running.append(make_running(f"r{i}").gpus(gpus).on(*(f"n{n}" for n in spots)).build())
    nodes = []
    for n, (size, off) in enumerate(zip(sizes, drained, strict=True)):
        node = make_node(f"n{n}").cpus(64).memory_gb(256).gpus(size).used(gpus=used[n])
        nodes.append((node.drained() if off else node).build())
    return nodes, running


@settings(max_examples=300, deadline=None)
@given(
    clusters(),
    st.integers(1, 8),
    st.integers(1, 3),
    st.data(),
)
def test_the_quick_check_never_says_no_when_the_victims_make_room(
    cluster: tuple[list, list[RunningApp]], gpus: int, containers: int, data: st.DataObject
) -> None:
    nodes, running = cluster
    victims = (
        data.draw(st.lists(st.sampled_from(running), unique_by=lambda a: a.app_id))
        if running
        else []
    )
    head = make_app("a").gpus(gpus).containers(containers).build()
    for placement in ("pack", "fgd"):
        index = FreeIndex(nodes, placement)
        said = _could_make_room(head, index, victims)
        future = index.copy()
        for app in victims:
            future.release(app)
        if future.place(head) is not None:
            assert said, (placement, [n.free.gpus for n in nodes], victims)


@settings(max_examples=100, deadline=None)
@given(clusters())
def test_free_gpu_counts_are_the_schedulable_nodes_whatever_the_placement(
    cluster: tuple[list, list[RunningApp]],
) -> None:
    nodes, running = cluster
    pack = FreeIndex(nodes, "pack")
    for app in running[:2]:  # changed after it was built: the lookup follows
        pack.release(app)
    counts = pack.free_gpu_counts()
    assert sum(counts.values()) == sum(1 for n in nodes if n.schedulable)
    for placement in ("fgd", "best-fit", "first-fit"):
        other = FreeIndex(nodes, placement)
        for app in running[:2]:
            other.release(app)
        assert other.free_gpu_counts() == counts
