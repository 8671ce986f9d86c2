"""Fuzzing the foundation's parsers: configuration text and instance ingest never fail with
anything but their typed, named errors."""

from __future__ import annotations


import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance import config, generate
from appliance.store import InvalidInstance, Store

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(st.text(max_size=400))
def test_any_text_is_a_config_or_a_config_error(text: str) -> None:
    try:
        config.parse(text)
    except config.ConfigError as e:
        assert str(e)  # always says what is wrong


@SETTINGS
@given(st.integers(min_value=0, max_value=len(config.example()) - 1), st.text(max_size=20))
def test_mutated_example_config(pos: int, junk: str) -> None:
    text = config.example()
    try:
        config.parse(text[:pos] + junk + text[pos + len(junk):])
    except config.ConfigError as e:
        assert str(e)


@pytest.fixture(scope="module")
def store_and_sample(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    cfg = config.parse(config.example(str(tmp / "data")))
    s = Store(cfg)
    s.open()
    sample = generate.synthetic_study("MR", 1, out_dir=tmp / "in")[0].read_bytes()
    yield s, sample
    s.close()


@SETTINGS
@given(data=st.data())
def test_ingest_of_damaged_files_is_refused_cleanly(store_and_sample, data) -> None:
    s, sample = store_and_sample
    how = data.draw(st.sampled_from(["cut", "flip", "splice", "random"]))
    if how == "cut":
        blob = sample[:data.draw(st.integers(0, len(sample) - 1))]
    elif how == "flip":
        i = data.draw(st.integers(0, 2000))
        blob = sample[:i] + bytes([sample[i] ^ 0xFF]) + sample[i + 1:]
    elif how == "splice":
        blob = sample[:data.draw(st.integers(0, 3000))] + data.draw(st.binary(max_size=300))
    else:
        blob = data.draw(st.binary(max_size=2000))
    before = s.used_bytes
    try:
        s.ingest_bytes(blob)
    except InvalidInstance as e:
        assert str(e)
        assert s.used_bytes == before  # nothing half-stored
        assert not list(s.tmp_dir.iterdir())
