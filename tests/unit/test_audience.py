"""Who receives the master's events: only registered clients, previews only to those that asked, nobody once a
registration lapsed."""

from __future__ import annotations

from comfy_distributed import events
from comfy_distributed.api.audience import MAX_LISTENERS, WATCH_TTL, Audience


def make(now: list[float]) -> tuple[Audience, list[tuple[str, str]]]:
    sent: list[tuple[str, str]] = []
    return Audience(lambda event, data, client_id: sent.append((event, client_id)), clock=lambda: now[0]), sent


def test_nobody_registered_means_no_event_is_sent():
    audience, sent = make([0.0])
    audience.notify(*events.notice("hello"))
    assert sent == []


def test_a_registration_lasts_its_ttl_and_can_be_ended():
    now = [0.0]
    audience, sent = make(now)
    assert audience.watch("a", True) == WATCH_TTL
    audience.watch("b", True, previews=True)
    now[0] += WATCH_TTL - 1
    audience.notify(*events.notice("1"))
    assert sent == [(events.NOTICE, "a"), (events.NOTICE, "b")]
    audience.watch("a", True)  # renewed
    now[0] += 2
    audience.notify(*events.notice("2"))
    assert sent[2:] == [(events.NOTICE, "a")]  # b lapsed
    assert audience.watch("a", False) == 0.0
    audience.notify(*events.notice("3"))
    assert sent[3:] == []


def test_previews_go_only_to_the_clients_that_asked_for_them():
    audience, sent = make([0.0])
    audience.watch("events-only", True)
    audience.watch("panel", True, previews=True)
    audience.notify(*events.preview("job", 1, 1, "GPU 1", "image/jpeg", "AAAA"))
    assert sent == [(events.PREVIEW, "panel")]
    assert audience.listeners(previews=True) == ["panel"]


def test_past_the_limit_the_registration_closest_to_lapsing_gives_way():
    now = [0.0]
    audience, _ = make(now)
    for index in range(MAX_LISTENERS + 5):
        now[0] += 0.01
        audience.watch(f"c{index}", True)
    listeners = audience.listeners()
    assert len(listeners) == MAX_LISTENERS and "c0" not in listeners and f"c{MAX_LISTENERS + 4}" in listeners
