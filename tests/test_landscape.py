"""The procedural landscape renderer: determinism, continuation, captions, objects, motion."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipeline.demo_data import landscape as L
from pipeline.demo_data import make as M


def scene(**changes) -> L.Scene:
    base = L.Scene(seed=1234, time_of_day="day", clouds="scattered", mountain_layers=3, mountain_height=0.3,
                   snow=True, ground="lake", trees=True, horizon=0.58, sun_u=0.4, sun_v=0.2, wind=0.04)
    return dataclasses.replace(base, **changes)


def test_same_seed_same_bytes_other_seed_differs():
    a = L.random_scene(np.random.default_rng([5, 1]))
    b = L.random_scene(np.random.default_rng([5, 1]))
    c = L.random_scene(np.random.default_rng([5, 2]))
    assert a == b and a != c
    img_a, img_b = L.render(a, 64, 96, x_offset=17, t=0.3), L.render(b, 64, 96, x_offset=17, t=0.3)
    assert img_a.dtype == np.uint8 and img_a.shape == (64, 96, 3)
    assert img_a.tobytes() == img_b.tobytes()
    assert not np.array_equal(img_a, L.render(c, 64, 96, x_offset=17, t=0.3))
    # Only the noise seed changed: still a different picture.
    assert not np.array_equal(L.render(scene(), 64, 64), L.render(scene(seed=99), 64, 64))


@pytest.mark.parametrize("ground,trees,time", [("lake", True, "day"), ("sea", False, "night"),
                                               ("field", True, "sunset"), ("lake", False, "dusk")])
def test_wider_render_continues_the_narrow_one(ground, trees, time):
    s = scene(ground=ground, trees=trees, time_of_day=time, sun_v=0.64 if time == "dusk" else 0.2)
    wide = L.render(s, 64, 256, t=0.5)
    assert np.array_equal(wide[:, :64], L.render(s, 64, 64, t=0.5))
    assert np.array_equal(wide[:, 100:164], L.render(s, 64, 64, x_offset=100, t=0.5))
    left = L.render(s, 64, 300, x_offset=-44, t=0.5)  # extends to the left as well
    assert np.array_equal(left[:, 44:], wide)
    # The continuation is new content, not a repeat of the first window.
    assert not np.array_equal(wide[:, :64], wide[:, 64:128])


def test_pictures_have_the_bands_and_colours_of_their_time_of_day():
    h = 96

    def mean(img, rows):
        return img[rows].reshape(-1, 3).mean(axis=0)

    day = L.render(scene(clouds="clear", time_of_day="day"), h, h)
    top = mean(day, slice(0, 10))
    assert top[2] > top[0] + 60  # a blue sky
    sunset = L.render(scene(clouds="clear", time_of_day="sunset", mountain_height=0.1, mountain_layers=1,
                            sun_v=0.45), h, h)
    near_horizon = mean(sunset, slice(int(0.58 * h) - 14, int(0.58 * h) - 8))
    assert near_horizon[0] > near_horizon[2] + 40  # orange above the horizon
    night = L.render(scene(time_of_day="night"), h, h)
    assert night.mean() < 45 < day.mean()
    # Sea: the water below the horizon is darker than the sky above it but mirrors its hue.
    sea = L.render(scene(ground="sea", clouds="clear", trees=False, mountain_height=0.1), h, h)
    sky, water = mean(sea, slice(0, int(0.5 * h))), mean(sea, slice(int(0.7 * h), h))
    assert water.sum() < sky.sum() and water[2] > water[0]


def test_captions_follow_the_scene_parameters():
    for time, words in {"night": ("night", "moon"), "sunset": ("sunset",), "dawn": ("dawn",),
                        "dusk": ("dusk",), "day": ("blue",)}.items():
        for seed in range(4):  # every phrasing variant
            text = L.caption(scene(time_of_day=time, seed=seed))
            assert all(w in text for w in words), (time, text)
            others = {"night", "sunset", "dawn", "dusk"} - {time}
            assert not any(o in text for o in others), (time, text)
    assert "snow" in L.caption(scene(snow=True)) and "snow" not in L.caption(scene(snow=False))
    assert "lake" in L.caption(scene(ground="lake"))
    assert "sea" in L.caption(scene(ground="sea", trees=False))
    assert "fields" in L.caption(scene(ground="field"))
    assert "trees" in L.caption(scene(trees=True)) and "trees" not in L.caption(scene(trees=False))
    assert "hill" in L.caption(scene(mountain_height=0.1, snow=False))
    assert "mountain" in L.caption(scene(mountain_height=0.3))
    for seed in range(4):
        assert "clouds" in L.caption(scene(clouds="cloudy", seed=seed))
        assert "clouds" not in L.caption(scene(clouds="clear", seed=seed))


def test_random_captions_vary():
    scenes = [L.random_scene(np.random.default_rng([0, i])) for i in range(300)]
    captions = {L.caption(s) for s in scenes}
    assert len(captions) > 150
    assert {s.time_of_day for s in scenes} == set(L.TIMES)
    assert {s.ground for s in scenes} == set(L.GROUNDS)
    assert {s.mountain_layers for s in scenes} == {1, 2, 3}


def test_bad_scene_parameters_are_refused():
    with pytest.raises(ValueError, match="time_of_day"):
        scene(time_of_day="noon")
    with pytest.raises(ValueError, match="mountain_layers"):
        scene(mountain_layers=4)
    assert L.Scene.from_dict(scene().to_dict()) == scene()


def test_video_moves_slowly_and_the_object_only_changes_its_track():
    s = scene(ground="field", time_of_day="day")
    obj = M.ObjectTrack(kind="car", color=(1.0, 0.1, 0.1), x0=0.3, speed=0.2, base=0.9, size=0.12)
    motion = M.Motion(x_start=10.0, pan=0.08, obj=obj)
    size, fps = 64, 10.0
    with_obj = M.render_video(s, motion, size, 6, fps)
    plain = M.render_video(s, motion, size, 6, fps, with_object=False)
    # The object-free video is the scene seen through the panning camera.
    for i in (0, 5):
        t = i / fps
        assert np.array_equal(plain[i], L.render(s, size, size, x_offset=10.0 + 0.08 * size * t, t=t))
    step = np.abs(plain[1:].astype(int) - plain[:-1]).mean()
    assert 0 < step < 12  # moving, slowly
    diff = np.abs(with_obj.astype(int) - plain).max(axis=-1)
    assert diff.max() > 100
    for i in range(6):  # differences only around the object's position in that frame
        ys, xs = np.nonzero(diff[i] > 0)
        cx = (obj.x0 + obj.speed * i / fps) * size
        assert np.all(np.abs(xs + 0.5 - cx) <= 1.2 * obj.size * size + 1)
        assert np.all(ys <= obj.base * size + 1)
    moved = [np.nonzero(diff[i].max(axis=0) > 0)[0].mean() for i in (0, 5)]
    assert moved[1] > moved[0] + 3  # it crosses the frame


@pytest.mark.parametrize("kind", ["car", "person", "boat"])
def test_every_object_kind_is_drawn(kind):
    frame = L.render(scene(ground="sea" if kind == "boat" else "field"), 64, 64)
    obj = M.ObjectTrack(kind=kind, color=(1.0, 0.85, 0.05), x0=0.5, speed=0.0, base=0.85, size=0.15)
    out = M.paste_object(frame, obj, 0.0)
    changed = np.abs(out.astype(int) - frame).max(axis=-1) > 40
    assert 15 < changed.sum() < 64 * 64 // 4


def test_random_objects_stand_on_their_ground():
    for i in range(60):
        rng = np.random.default_rng([9, i])
        s = L.random_scene(rng)
        obj = M.random_object(rng, s)
        if s.ground == "sea":
            assert obj.kind == "boat"
        if s.ground == "field":
            assert obj.kind in ("car", "person") and obj.base > s.horizon
        if obj.kind == "boat":  # on water: between the horizon and the nearest possible shore
            assert s.horizon < obj.base < s.horizon + 0.45 * (1 - s.horizon) or s.ground == "sea"
        elif s.ground == "lake":  # on the grass strip below any shore
            u = np.linspace(-20, 20, 4001)
            assert obj.base > L._shore(s, u).max()
