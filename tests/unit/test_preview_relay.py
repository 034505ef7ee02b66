"""The preview relay: leases of the watchers, at most a few frames a second per unit (the newest kept), and an end."""

from __future__ import annotations

import base64
import time

from comfy_distributed import events
from comfy_distributed.cluster.previews import FRAME_INTERVAL, MAX_WATCHERS, WATCH_TTL, PreviewRelay, PreviewSource
from comfy_distributed.worker_client import PreviewFrame
from tests.waiting import until

UNIT = PreviewSource("job-1", 2, 1, "GPU 1")


def frame(n: int) -> PreviewFrame:
    return PreviewFrame("image/jpeg", b"\xff\xd8\xff" + bytes([n]))


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[float, dict]] = []

    def __call__(self, name: str, data: dict) -> None:
        assert name == events.PREVIEW
        self.sent.append((time.monotonic(), data))

    def images(self) -> list[bytes | None]:
        return [None if d["data"] is None else base64.b64decode(d["data"]) for _, d in self.sent]


def test_a_lease_lasts_its_ttl_and_ends_when_asked():
    now = [100.0]
    relay = PreviewRelay(Recorder(), clock=lambda: now[0])
    assert not relay.watched()
    assert relay.watch("panel-a", True) == WATCH_TTL and relay.watched()
    now[0] += WATCH_TTL - 1
    assert relay.watched()
    relay.watch("panel-b", True)
    now[0] += 2
    assert relay.watched()  # panel-a lapsed, panel-b is fresh
    assert relay.watch("panel-b", False) == 0.0
    assert not relay.watched()


def test_one_panel_closing_leaves_another_watching():
    relay = PreviewRelay(Recorder())
    relay.watch("a", True)
    relay.watch("b", True)
    relay.watch("a", False)
    assert relay.watched()


def test_leases_are_bounded():
    now = [0.0]
    relay = PreviewRelay(Recorder(), clock=lambda: now[0])
    for index in range(MAX_WATCHERS + 10):
        now[0] += 0.001
        relay.watch(f"w{index}", True)
    assert len(relay._leases) == MAX_WATCHERS and "w0" not in relay._leases and f"w{MAX_WATCHERS + 9}" in relay._leases


async def test_frames_are_sent_at_most_a_few_a_second_the_newest_kept():
    sent = Recorder()
    relay = PreviewRelay(sent)
    relay.watch("panel", True)
    sink = relay.sink(UNIT)
    assert sink.wanted()
    for n in range(5):  # five frames at once: the first now, then only the newest
        sink.show(frame(n))
    assert sent.images() == [frame(0).image]
    await until(lambda: len(sent.sent) == 2, 5, "the newest frame after the interval")
    assert sent.images() == [frame(0).image, frame(4).image]
    assert sent.sent[1][0] - sent.sent[0][0] >= FRAME_INTERVAL - 0.02
    assert sent.sent[0][1] == {"job_id": "job-1", "position": 2, "worker_id": 1, "worker": "GPU 1",
                               "mime": "image/jpeg", "data": base64.b64encode(frame(0).image).decode()}
    relay.end(UNIT)
    assert sent.sent[-1][1] == {"job_id": "job-1", "position": 2, "worker_id": 1, "worker": "GPU 1", "mime": None,
                                "data": None}
    assert len(relay) == 0


async def test_an_end_drops_the_waiting_frame():
    sent = Recorder()
    relay = PreviewRelay(sent)
    relay.watch("panel", True)
    relay.show(UNIT, frame(1))
    relay.show(UNIT, frame(2))  # waits for the interval
    timer = relay._units[UNIT].timer
    assert timer is not None and not timer.cancelled()
    relay.end(UNIT)
    assert timer.cancelled() and len(relay) == 0
    assert sent.images() == [frame(1).image, None]


async def test_units_are_throttled_each_on_its_own():
    sent = Recorder()
    relay = PreviewRelay(sent)
    relay.watch("panel", True)
    other = PreviewSource("job-1", 3, 2, "GPU 2")
    relay.show(UNIT, frame(1))
    relay.show(other, frame(2))
    assert [d["position"] for _, d in sent.sent] == [2, 3]
    relay.end(UNIT)
    relay.end(other)


def test_a_unit_that_showed_nothing_ends_without_an_event():
    sent = Recorder()
    relay = PreviewRelay(sent)
    relay.end(UNIT)
    assert sent.sent == [] and not relay.sink(UNIT).wanted()
