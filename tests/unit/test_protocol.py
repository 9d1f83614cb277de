"""The bus envelope (common/protocol.py): typed values, size limits, undecodable frames and the
request shape check."""

import datetime

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common import protocol
from common.protocol import MAX_FRAME_BYTES, PROTOCOL_VERSION, check_request, pack, unpack

UTC = datetime.timezone.utc


def roundtrip(value):
    return unpack(pack(value))


@pytest.mark.parametrize("value", [
    "", "plain", "ünïcödé ✓", "OpaqueRef:0b6c6f43-5cbe-4a5e-9b7b-3e0a3f0e7d11",
    0, 1, -1, 2**63 - 1, -(2**63), 2**64 - 1,
    0.0, 1.5, -2.25, 1e300,
    True, False, None,
    [], [1, "a", None, [2.5, [True]]],
    {}, {"a": 1, "b": {"c": [1, 2, {"d": None}]}},
    b"", b"\x00\xff binary",
])
def test_round_trip_of_every_bus_type(value):
    back = roundtrip(value)
    assert back == value
    assert type(back) is type(value)


def test_bool_and_int_stay_distinct():
    back = roundtrip([True, 1, False, 0])
    assert [type(v) for v in back] == [bool, int, bool, int]


def test_str_and_bytes_stay_distinct():
    back = roundtrip({"s": "abc", "b": b"abc"})
    assert back == {"s": "abc", "b": b"abc"}
    assert isinstance(back["s"], str) and isinstance(back["b"], bytes)


def test_non_string_map_keys_travel():
    assert roundtrip({1: "one", 2: "two"}) == {1: "one", 2: "two"}


def test_aware_utc_datetime_comes_back_equal_and_aware_utc():
    when = datetime.datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=UTC)
    back = roundtrip(when)
    assert isinstance(back, datetime.datetime)
    assert back == when
    assert back.utcoffset() == datetime.timedelta(0)


def test_naive_datetime_is_taken_as_utc():
    naive = datetime.datetime(2001, 9, 9, 1, 46, 40, 7)
    back = roundtrip(naive)
    assert back.tzinfo is not None and back.utcoffset() == datetime.timedelta(0)
    assert back == naive.replace(tzinfo=UTC)


def test_datetime_in_another_zone_comes_back_as_the_same_instant_in_utc():
    zone = datetime.timezone(datetime.timedelta(hours=5, minutes=30))
    when = datetime.datetime(2020, 1, 1, 12, 0, 0, tzinfo=zone)
    back = roundtrip(when)
    assert back == when
    assert back.utcoffset() == datetime.timedelta(0)
    assert (back.hour, back.minute) == (6, 30)


def test_datetimes_inside_containers():
    when = datetime.datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC)
    back = roundtrip({"at": [when, {"nested": when}]})
    assert back == {"at": [when, {"nested": when}]}
    assert back["at"][1]["nested"].utcoffset() == datetime.timedelta(0)


def test_datetime_travels_as_a_msgpack_timestamp():
    when = datetime.datetime(2021, 6, 1, tzinfo=UTC)
    raw = msgpack.unpackb(pack(when), timestamp=0)
    assert isinstance(raw, msgpack.Timestamp)
    assert raw.to_datetime() == when


@pytest.mark.parametrize("value, expected", [
    ((1, 2, 3), [1, 2, 3]),
    ({"t": ("a", ("b",))}, {"t": ["a", ["b"]]}),
    ({3}, [3]),
    (frozenset({"x"}), ["x"]),
    ([{1, 2}], None),  # order of a set is not defined: checked below
])
def test_sets_and_tuples_become_lists(value, expected):
    back = roundtrip(value)
    if expected is None:
        assert isinstance(back[0], list) and sorted(back[0]) == [1, 2]
    else:
        assert back == expected


class Opaque:
    pass


@pytest.mark.parametrize("value, type_name", [
    (Opaque(), "Opaque"),
    ({"k": [1, Opaque()]}, "Opaque"),
    (1 + 2j, "complex"),
    (object(), "object"),
    (datetime.date(2020, 1, 1), "date"),
])
def test_unsupported_type_raises_type_error_naming_the_type(value, type_name):
    with pytest.raises(TypeError) as info:
        pack(value)
    assert type_name in str(info.value)


def test_frame_over_the_limit_is_refused_with_value_error():
    frame = pack(b"x" * MAX_FRAME_BYTES)  # the payload alone is at the limit; the frame is over
    assert len(frame) > MAX_FRAME_BYTES
    with pytest.raises(ValueError) as info:
        unpack(frame)
    assert str(MAX_FRAME_BYTES) in str(info.value)


def test_frame_at_the_limit_is_accepted():
    payload = b"y" * (MAX_FRAME_BYTES - 16)
    frame = pack(payload)
    assert len(frame) <= MAX_FRAME_BYTES
    assert unpack(frame) == payload


@pytest.mark.parametrize("frame", [
    b"",                              # nothing
    b"\xc1",                          # the one byte msgpack never uses
    b"\x92\x01",                      # array of 2 with one element: truncated
    b"\x01\x02",                      # extra data after a value
    b"\xd5\xff\x00\x00",              # timestamp extension of a bad length
    b"\xc7\x0c\xff" + b"\xff" * 12,   # timestamp with nanoseconds out of range
    b"\x81\x90\x00",                  # map with a list as key (unhashable)
    b"\x91" * 100_000,                # nesting deeper than the unpacker's stack
    b"\xdb\xff\xff\xff\xff",          # str32 claiming 4 GiB
])
def test_known_garbage_raises_value_error(frame):
    with pytest.raises(ValueError):
        unpack(frame)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_random_bytes_decode_or_raise_value_error_only(data):
    try:
        unpack(data)
    except ValueError:
        pass  # any other exception type fails the test


@settings(max_examples=200, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20), st.data())
def test_truncated_or_corrupted_valid_frames_raise_value_error_only(value, data):
    frame = bytearray(pack(value))
    assert unpack(bytes(frame)) == value
    cut = data.draw(st.integers(0, len(frame)))
    flip = data.draw(st.integers(0, max(0, len(frame) - 1)))
    if frame:
        frame[flip] ^= data.draw(st.integers(1, 255))
    for candidate in (bytes(frame[:cut]), bytes(frame)):
        try:
            unpack(candidate)
        except ValueError:
            pass


# -- check_request ---------------------------------------------------------------------------

def good_request(**overrides):
    msg = protocol.request(7, "db.read_field", ["VM", "OpaqueRef:x"], {"field": "name"},
                           deadline=1_700_000_000.5)
    msg.update(overrides)
    return msg


def test_check_request_accepts_a_good_request():
    assert check_request(good_request()) == (
        7, "db.read_field", ["VM", "OpaqueRef:x"], {"field": "name"}, 1_700_000_000.5)


def test_check_request_accepts_a_request_through_the_wire():
    msg = unpack(pack(protocol.request(1, "sys.health")))
    assert check_request(msg) == (1, "sys.health", [], {}, None)


def test_check_request_defaults_missing_args_and_kwargs():
    msg = {"v": PROTOCOL_VERSION, "id": 3, "m": "sys.stats"}
    assert check_request(msg) == (3, "sys.stats", [], {}, None)


def test_check_request_accepts_an_integer_deadline():
    assert check_request(good_request(dl=1_700_000_000))[4] == 1_700_000_000


@pytest.mark.parametrize("msg, words", [
    ([1, "sys.health"], "not a map"),
    ("request", "not a map"),
    (None, "not a map"),
    (good_request(v=2), "version"),
    (good_request(v="1"), "version"),
    ({k: v for k, v in good_request().items() if k != "v"}, "version"),
    (good_request(m=None), "method"),
    (good_request(m=""), "method"),
    (good_request(m=42), "method"),
    ({k: v for k, v in good_request().items() if k != "m"}, "method"),
    (good_request(a={"x": 1}), "arguments are not a list"),
    (good_request(a="abc"), "arguments are not a list"),
    (good_request(a=None), "arguments are not a list"),
    (good_request(kw=["x"]), "keyword arguments"),
    (good_request(kw={1: "x"}), "keyword arguments"),
    (good_request(kw=None), "keyword arguments"),
    (good_request(dl="soon"), "deadline"),
    (good_request(dl=[1]), "deadline"),
])
def test_check_request_names_what_is_wrong(msg, words):
    with pytest.raises(ValueError) as info:
        check_request(msg)
    assert words in str(info.value)


@pytest.mark.parametrize("msg, words", [
    (good_request(v=True), "version"),
    (good_request(dl=True), "deadline"),
])
def test_check_request_refuses_bools_for_numbers(msg, words):
    with pytest.raises(ValueError) as info:
        check_request(msg)
    assert words in str(info.value)
