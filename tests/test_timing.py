"""The interleaved timer: rotation order, counts and statistics (no speed is asserted)."""

import pytest

from retinaunet_deploy.timing import interleaved_latency, summarize


def test_candidates_are_interleaved_in_rotating_order():
    calls = []
    candidates = {name: (lambda n=name: calls.append(n)) for name in "ABC"}
    figures = interleaved_latency(candidates, rounds=3, warmup=1, block=1, settle_seconds=0)
    assert calls[:3] == ["A", "B", "C"]  # warm-up, in order
    assert calls[3:] == ["A", "B", "C", "B", "C", "A", "C", "A", "B"]
    assert {name: f["runs"] for name, f in figures.items()} == {"A": 3, "B": 3, "C": 3}


def test_blocks_rotate_and_discard_the_wake_up_call():
    calls = []
    candidates = {name: (lambda n=name: calls.append(n)) for name in "AB"}
    figures = interleaved_latency(candidates, rounds=4, warmup=0, block=3, settle_seconds=0)
    # Two rounds of blocks of 3 (2 timed each): A A A B B B, then B B B A A A.
    assert calls == list("AAABBB" + "BBBAAA")
    assert {name: f["runs"] for name, f in figures.items()} == {"A": 4, "B": 4}


def test_min_seconds_adds_rounds():
    import time

    figures = interleaved_latency({"sleep": lambda: time.sleep(0.002)}, rounds=1, warmup=0,
                                  min_seconds=0.02)
    assert figures["sleep"]["runs"] >= 5


def test_summarize_by_hand():
    figures = summarize([1_000_000, 2_000_000, 3_000_000, 4_000_000], batch_size=8)
    assert figures["p50_ms"] == pytest.approx(2.5)
    assert figures["mean_ms"] == pytest.approx(2.5)
    assert figures["min_ms"] == pytest.approx(1.0)
    assert figures["images_per_s"] == pytest.approx(8 * 1000 / 2.5)
