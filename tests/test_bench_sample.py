"""The sampler benchmark runs on the CPU and honours model overrides (figures themselves are not asserted)."""

import pytest

from pipeline.bench.sample import main, parse_overrides


def test_overrides_are_read_as_yaml_scalars_and_bad_ones_are_refused():
    assert parse_overrides(["d_model=96", "n_layer=3", "rpe=post"]) == {"d_model": 96, "n_layer": 3, "rpe": "post"}
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        parse_overrides(["d_model"])


def test_ar_cache_benchmark_on_an_overridden_model(one_thread):
    base = main(["--skip", "parallel", "memory", "--repeats", "1"])
    wider = main(["--skip", "parallel", "memory", "--repeats", "1", "--set", "d_model=96", "n_head=4"])
    assert wider["overrides"] == {"d_model": 96, "n_head": 4}
    assert wider["parameters"] > base["parameters"]
    (row,) = wider["ar_cache"]
    assert row["context_patches"] > 0  # an interior patch: the window is full
    for way in ("cache", "sliding_window"):
        assert row[way]["seconds_per_patch"] > 0 and row[way]["tokens_per_s"] > 0
    assert row["speedup"] == pytest.approx(row["cache"]["tokens_per_s"] / row["sliding_window"]["tokens_per_s"],
                                           rel=0.01)


def test_ar_cache_benchmark_times_each_decode_mode(one_thread):
    result = main(["--skip", "parallel", "memory", "--repeats", "1", "--decode", "eager", "compiled"])
    (row,) = result["ar_cache"]
    for mode in ("", "_compiled"):
        cache = row[f"cache{mode}"]
        assert cache["seconds_per_patch"] > 0 and cache["first_patch_seconds"] > 0
        assert row[f"speedup{mode}"] == pytest.approx(cache["tokens_per_s"] / row["sliding_window"]["tokens_per_s"],
                                                      rel=0.01)
    with pytest.raises(SystemExit, match="CUDA graphs need --device cuda"):
        main(["--skip", "parallel", "memory", "--decode", "graph"])


@pytest.mark.parametrize("failing_call", [1, 2])  # the first patch (compile / capture) or a timed round
def test_a_failing_decode_mode_is_reported_and_the_others_are_still_timed(one_thread, monkeypatch, capsys,
                                                                         failing_call):
    import json

    import model.decoding
    from pipeline.bench.__main__ import main as bench_main

    calls = []

    def broken_compile(renderer):
        calls.append(1)
        if len(calls) >= failing_call:
            raise RuntimeError("no compiler for this step")
        return renderer.decode_step

    monkeypatch.setattr(model.decoding, "compiled_decode_step", broken_compile)
    status = bench_main(["sample", "--skip", "parallel", "memory", "--repeats", "2", "--decode", "eager", "compiled"])
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert status == 1
    # Each part was also logged as soon as it was done (a run cut off by a time limit keeps it).
    (logged,) = [line for line in captured.err.splitlines() if line.startswith("[bench sample] ")]
    assert json.loads(logged.removeprefix("[bench sample] ")) == {"ar_cache": result["ar_cache"]}
    (row,) = result["ar_cache"]
    assert row["cache_compiled"] == {"error": "RuntimeError: no compiler for this step"}
    assert "speedup_compiled" not in row
    assert result["failed"] == {"ar_cache batch 1 cache_compiled": "RuntimeError: no compiler for this step"}
    assert len(calls) == failing_call  # a failed way leaves the turns
    for way in ("cache", "sliding_window"):  # the other ways ran every round
        assert len(row[way]["rounds_seconds"]) == 2 and row[way]["tokens_per_s"] > 0
    assert row["speedup"] > 0
