"""PromptCache: decoded once, looked at again on disk at most every revalidate_s (no thread hop per play)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf
import trio
import trio.testing

from gateway.voice.media import PromptCache, PromptError


def _write(path, freq: float, seconds: float, rate: int = 8000) -> None:
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype("float32"), rate)


async def test_a_replaced_prompt_is_played_after_the_revalidation_interval(
    tmp_path, autojump_clock, monkeypatch
):
    path = tmp_path / "menu.wav"
    _write(path, 440.0, 0.5)
    cache = PromptCache(revalidate_s=1.0)
    stats = 0
    original = type(path).stat

    def counting_stat(self, *args, **kwargs):
        nonlocal stats
        stats += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(path), "stat", counting_stat)
    first = await cache.load(path)
    assert first.size == 4000 and cache.loads == 1
    _write(path, 1000.0, 0.25)  # replaced on disk (other size)
    os.utime(path, ns=(1, 1))
    before = stats
    for _ in range(20):  # key presses within the interval: no stat, the cached prompt
        assert (await cache.load(path)) is first
    assert stats == before and cache.loads == 1
    await trio.sleep(1.01)
    second = await cache.load(path)
    assert second.size == 2000 and cache.loads == 2
    assert (await cache.load(path)) is second


async def test_a_deleted_prompt_is_an_error_once_the_interval_has_passed(tmp_path, autojump_clock):
    path = tmp_path / "bye.wav"
    _write(path, 440.0, 0.2)
    cache = PromptCache(revalidate_s=1.0)
    await cache.load(path)
    path.unlink()
    await cache.load(path)  # within the interval: still the cached audio
    await trio.sleep(1.01)
    with pytest.raises(PromptError, match="does not exist"):
        await cache.load(path)


async def test_a_cache_hit_is_a_checkpoint(tmp_path, autojump_clock):
    path = tmp_path / "p.wav"
    _write(path, 440.0, 0.1)
    cache = PromptCache()
    await cache.load(path)
    with trio.testing.assert_checkpoints():
        await cache.load(path)
