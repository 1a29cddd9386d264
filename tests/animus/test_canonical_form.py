"""The chain's canonical form: the fast serialiser against the RFC 8785
reference, on generated JSON values, so the shortcut can never fork a hash."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from animus.chain import canonical_envelope, canonical_json, format_timestamp

# Every JSON value, including the awkward ones: non-ASCII and astral keys
# (UTF-16 order differs from code-point order), big and negative integers,
# floats in exponent form, control characters and escapes.
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=30,
)


def _reference(value: object) -> bytes | None:
    try:
        return rfc8785.dumps(value)
    except rfc8785.CanonicalizationError:
        return None


@settings(max_examples=600, deadline=None)
@given(JSON)
def test_the_fast_path_writes_the_reference_bytes(value: object) -> None:
    expected = _reference(value)
    if expected is None:
        with pytest.raises(rfc8785.CanonicalizationError):
            canonical_json(value)
    else:
        assert canonical_json(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        {"\U0001f600": 1, "\uffff": 2},  # UTF-16 order differs from code points
        {"b": 1.0, "a": 1e21, "c": 1e-7, "d": -0.0},
        {"x": "line\nbreak\t\u0007\u2028\"quote\\"},
        [2**53 - 1, -(2**53) + 1],
    ],
)
def test_known_differences_from_the_c_encoder_follow_the_reference(
    value: object,
) -> None:
    assert canonical_json(value) == rfc8785.dumps(value)


@pytest.mark.parametrize("value", ["\ud800", {"k": "a\udfffb"}, 2**53, float("nan")])
def test_values_without_a_canonical_form_are_refused(value: object) -> None:
    with pytest.raises(rfc8785.CanonicalizationError):
        canonical_json(value)


@settings(max_examples=200, deadline=None)
@given(data=st.dictionaries(st.text(max_size=6), JSON, max_size=4), meta=JSON)
def test_the_spliced_envelope_equals_the_reference_envelope(
    data: dict[str, object], meta: object
) -> None:
    if _reference(data) is None or _reference(meta) is None:
        return
    moment = datetime(2026, 12, 4, 6, 1, 2, 345678, tzinfo=UTC)
    fields = dict(
        event_id="0b6f1c1e-2d5c-4d7e-9d61-6b0f5c1f6a10",
        stream_type="run",
        stream_id="run-\u00e9t\u00e9",
        project_id=None,
        event_type="RunSubmitted",
        schema_version=1,
    )
    spliced = canonical_envelope(
        position=7,
        stream_version=3,
        data=data,
        metadata=meta,  # type: ignore[arg-type]
        recorded_at=moment,
        **fields,
    )
    reference = rfc8785.dumps(
        {
            "canonical_version": 1,
            "position": 7,
            "event_id": fields["event_id"],
            "stream_type": fields["stream_type"],
            "stream_id": fields["stream_id"],
            "stream_version": 3,
            "project_id": None,
            "type": fields["event_type"],
            "schema_version": 1,
            "data": data,
            "metadata": meta,
            "recorded_at": format_timestamp(moment),
        }
    )
    assert spliced == reference
