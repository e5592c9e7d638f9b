"""Tensors across the process boundary: round trips, and every kind of bad payload refused.

The bad payloads are a table (STYLE.md rule 9): each row is bytes a client might send and the
message the Node must answer with. Nothing here is ever unpickled by `pygrid.serde`.
"""

from __future__ import annotations

import io
import json
import pickle
import re
import struct
from pathlib import Path
from typing import Any

import pytest
import torch

from pygrid import serde
from pygrid.errors import InvalidInput
from pygrid.serde import TensorPayloadError, TensorSpec

LIMIT = 1024 * 1024


def model_params() -> dict[str, torch.Tensor]:
    """Parameters in a deliberately unsorted order, one tensor per supported dtype family."""
    torch.manual_seed(0)
    return {
        "fc2.weight": torch.randn(3, 4),
        "fc1.weight": torch.randn(4, 2, dtype=torch.float64),
        "embedding.weight": torch.randn(5, 2).to(torch.bfloat16),
        "steps": torch.arange(6, dtype=torch.int64),
        "half": torch.randn(2, dtype=torch.float16),
        "mask": torch.tensor([True, False]),
        "bytes": torch.tensor([0, 255], dtype=torch.uint8),
        "scalar": torch.tensor(1.5),
        "empty": torch.zeros(0, 3),
    }


def raw_payload(
    header: dict[str, Any], data: bytes = b"", *, header_len: int | None = None
) -> bytes:
    """Hand-built safetensors bytes, so tests can write headers that `dump` never would."""
    text = json.dumps(header).encode()
    length = len(text) if header_len is None else header_len
    return struct.pack("<Q", length) + text + data


def f32_entry(shape: list[int], begin: int = 0) -> dict[str, Any]:
    end = begin + 4 * (shape[0] if shape else 1)
    return {"dtype": "F32", "shape": shape, "data_offsets": [begin, end]}


def torch_save_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buffer)
    return buffer.getvalue()


# -- round trips -------------------------------------------------------------------------------


def test_round_trip_keeps_order_dtypes_and_values() -> None:
    # Prepare
    params = model_params()

    # Execute
    loaded = serde.load(serde.dump(params), max_bytes=LIMIT)

    # Assert
    assert list(loaded) == list(params)
    for name, tensor in params.items():
        assert loaded[name].dtype == tensor.dtype, name
        assert loaded[name].shape == tensor.shape, name
        assert torch.equal(loaded[name], tensor), name


def test_round_trip_with_expected_spec_and_metadata() -> None:
    params = model_params()
    data = serde.dump(params, metadata={"model": "digits-mlp", "cycle": "3"})

    loaded = serde.load(data, expected=serde.spec_of(params), max_bytes=LIMIT)
    info = serde.header_info(data)

    assert list(loaded) == list(params)
    assert info["metadata"] == {"model": "digits-mlp", "cycle": "3"}
    assert info["spec"] == serde.spec_of(params)


def test_tensors_come_back_in_expected_order_when_given() -> None:
    params = {"b": torch.zeros(2), "a": torch.ones(3)}
    expected = (TensorSpec("a", (3,), "float32"), TensorSpec("b", (2,), "float32"))

    loaded = serde.load(serde.dump(params), expected=expected, max_bytes=LIMIT)

    assert list(loaded) == ["a", "b"]


def test_dump_detaches_and_handles_shared_storage() -> None:
    # a tied weight and a parameter that requires grad, as in a real model
    weight = torch.nn.Parameter(torch.randn(3, 3))
    params = {"encoder.weight": weight, "decoder.weight": weight, "view": weight.detach()[0]}

    loaded = serde.load(serde.dump(params), max_bytes=LIMIT)

    assert torch.equal(loaded["encoder.weight"], weight.detach())
    assert torch.equal(loaded["decoder.weight"], weight.detach())
    assert torch.equal(loaded["view"], weight.detach()[0])
    assert not loaded["encoder.weight"].requires_grad


def test_model_state_round_trips_in_named_parameters_order() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    params = dict(model.named_parameters())

    loaded = serde.load(serde.dump(params), expected=serde.spec_of(params), max_bytes=LIMIT)

    assert list(loaded) == [name for name, _ in model.named_parameters()]


def test_payload_from_another_tool_loads_in_file_order() -> None:
    from safetensors.torch import save

    data = save({"b": torch.zeros(2), "a": torch.ones(2)})

    assert list(serde.load(data, max_bytes=LIMIT)) == ["a", "b"]


def test_a_hand_written_header_loads() -> None:
    # no padding and no "order" metadata: the checks accept any valid safetensors layout
    payload = raw_payload(
        {"a": f32_entry([2]), "b": f32_entry([1], begin=8)}, struct.pack("<3f", 1.0, 2.0, 3.0)
    )

    loaded = serde.load(payload, max_bytes=LIMIT)

    assert loaded["a"].tolist() == [1.0, 2.0]
    assert loaded["b"].tolist() == [3.0]


def test_nonfinite_values_pass_when_allowed() -> None:
    data = serde.dump({"w": torch.tensor([float("nan"), float("inf")])})

    loaded = serde.load(data, max_bytes=LIMIT, allow_nonfinite=True)

    assert torch.isnan(loaded["w"][0]) and torch.isinf(loaded["w"][1])


@pytest.mark.parametrize(
    ("params", "metadata", "message"),
    [
        ({"w": torch.zeros(1)}, {"order": "[]"}, "metadata key 'order' is reserved"),
        ({"w": torch.zeros(1)}, {"k": 1}, "metadata keys and values must be strings"),
        ({"": torch.zeros(1)}, None, "invalid tensor name ''"),
        ({"__metadata__": torch.zeros(1)}, None, "invalid tensor name '__metadata__'"),
        ({"c": torch.zeros(1, dtype=torch.complex64)}, None, "tensor 'c': unsupported dtype"),
        ({"s": torch.eye(2).to_sparse()}, None, "tensor 's': only dense tensors"),
    ],
)
def test_dump_refuses_what_load_would_refuse(
    params: dict[str, torch.Tensor], metadata: Any, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        serde.dump(params, metadata=metadata)


def test_dump_refuses_non_tensors() -> None:
    with pytest.raises(TypeError, match="'w' is a list, not a torch.Tensor"):
        serde.dump({"w": [1.0]})  # type: ignore[dict-item]


# -- specs -------------------------------------------------------------------------------------


def test_spec_json_round_trip() -> None:
    spec = serde.spec_of(model_params())

    as_json = serde.spec_to_json(spec)
    text = json.dumps(as_json)

    assert as_json[0] == {"name": "fc2.weight", "shape": [3, 4], "dtype": "float32"}
    assert serde.spec_from_json(as_json) == spec
    assert serde.spec_from_json(text) == spec
    assert spec[0].nbytes == 3 * 4 * 4


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"name": "w"}, "a params spec must be a JSON list"),
        ([{"name": "w", "shape": [1]}], "entry 0 must have exactly: name, shape, dtype"),
        ([{"name": "", "shape": [1], "dtype": "float32"}], "name must be a non-empty string"),
        ([{"name": "w", "shape": [-1], "dtype": "float32"}], "'w': shape must be a list of"),
        ([{"name": "w", "shape": [True], "dtype": "float32"}], "'w': shape must be a list of"),
        ([{"name": "w", "shape": [1], "dtype": "complex64"}], "'w': unsupported dtype"),
        (
            [
                {"name": "w", "shape": [1], "dtype": "float32"},
                {"name": "w", "shape": [1], "dtype": "float32"},
            ],
            "names 'w' twice",
        ),
    ],
)
def test_spec_from_json_refuses_malformed_specs(value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        serde.spec_from_json(value)


# -- bad payloads ------------------------------------------------------------------------------

GOOD = serde.dump({"fc.weight": torch.ones(2, 3), "fc.bias": torch.zeros(2)})
EXPECTED = (TensorSpec("fc.weight", (2, 3), "float32"), TensorSpec("fc.bias", (2,), "float32"))

BAD_PAYLOADS = [
    pytest.param(b"", "not a safetensors payload (empty)", id="empty"),
    pytest.param(
        b"\x01\x02\x03",
        "not a safetensors payload (3 bytes, shorter than the 8-byte header length)",
        id="shorter-than-length",
    ),
    pytest.param(
        GOOD[:40],
        f"not a safetensors payload (header length {len(GOOD) - 8 - 4 * 8} points past",
        id="truncated",
    ),
    pytest.param(
        b"this is not a tensor file at all, just some text",
        "not a safetensors payload (header length",
        id="garbage",
    ),
    pytest.param(
        raw_payload({}, header_len=10_000),
        "header length 10000 points past the end of the 10-byte payload",
        id="header-length-past-end",
    ),
    pytest.param(
        struct.pack("<Q", 2**64 - 1) + b"{}",
        f"header length {2**64 - 1} points past the end of the 10-byte payload",
        id="huge-header-length",
    ),
    pytest.param(
        pickle.dumps({"fc.weight": [[1.0, 2.0]]}),
        "not a safetensors payload (looks like a pickle)",
        id="pickle",
    ),
    pytest.param(
        torch_save_bytes(),
        "not a safetensors payload (looks like a zip archive, e.g. from torch.save)",
        id="torch-save",
    ),
    pytest.param(
        struct.pack("<Q", 4) + b"[1] ",
        "not a safetensors payload (header does not start with '{')",
        id="header-not-object",
    ),
    pytest.param(
        struct.pack("<Q", 5) + b"{oops",
        "not a safetensors payload (header is not valid UTF-8 JSON",
        id="header-not-json",
    ),
    pytest.param(
        struct.pack("<Q", 24) + b'{"a": 1, "a": 2}        ',
        "duplicate key 'a'",
        id="duplicate-key",
    ),
    pytest.param(
        raw_payload({"w": f32_entry([4])}, b"\0" * 8),
        "tensor 'w': data_offsets [0, 16] point past the end of the 8-byte data section",
        id="offset-past-end",
    ),
    pytest.param(
        raw_payload({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, b"\0" * 8),
        "tensor 'w': shape [4] of float32 needs 16 bytes, data_offsets [0, 8] hold 8",
        id="shape-size-mismatch",
    ),
    pytest.param(
        raw_payload({"w": f32_entry([2], begin=4)}, b"\0" * 12),
        "tensor 'w' starts at byte 4 of the data section, expected 0",
        id="gap-before-tensor",
    ),
    pytest.param(
        raw_payload({"a": f32_entry([2]), "b": f32_entry([2])}, b"\0" * 8),
        "tensor 'b' starts at byte 0 of the data section, expected 8",
        id="overlapping-tensors",
    ),
    pytest.param(
        raw_payload({"w": f32_entry([2])}, b"\0" * 12),
        "safetensors payload has 4 bytes after the last tensor",
        id="trailing-bytes",
    ),
    pytest.param(
        raw_payload({"w": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8),
        "tensor 'w' has unsupported dtype 'C64'",
        id="unsupported-dtype",
    ),
    pytest.param(
        raw_payload({"w": {"dtype": "F32", "shape": [1]}}, b"\0" * 4),
        "tensor 'w' must have exactly: dtype, shape, data_offsets",
        id="entry-missing-offsets",
    ),
    pytest.param(
        raw_payload({"w": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}}, b"\0" * 4),
        "tensor 'w': shape must be a list of non-negative ints",
        id="float-dimension",
    ),
    pytest.param(
        raw_payload({"__metadata__": {"order": 3}, "w": f32_entry([1])}, b"\0" * 4),
        "__metadata__ must map strings to strings",
        id="metadata-not-strings",
    ),
    pytest.param(
        raw_payload({"__metadata__": {"order": '["w", "x"]'}, "w": f32_entry([1])}, b"\0" * 4),
        "metadata 'order' must be a JSON list naming each tensor once",
        id="order-names-unknown-tensor",
    ),
    pytest.param(
        raw_payload({"__metadata__": {"order": "[[1]]"}, "w": f32_entry([1])}, b"\0" * 4),
        "metadata 'order' must be a JSON list naming each tensor once",
        id="order-not-names",
    ),
    pytest.param(
        serde.dump({"fc.weight": torch.ones(2, 3)}),
        "missing tensor(s): 'fc.bias'",
        id="missing-name",
    ),
    pytest.param(
        serde.dump({"fc.weight": torch.ones(2, 3), "fc.bias": torch.zeros(2), "x": torch.ones(1)}),
        "unexpected tensor(s): 'x'",
        id="extra-name",
    ),
    pytest.param(
        serde.dump({"fc.weight": torch.ones(2, 3), "fc.bais": torch.zeros(2)}),
        "missing tensor(s): 'fc.bias'; unexpected tensor(s): 'fc.bais'",
        id="wrong-name",
    ),
    pytest.param(
        serde.dump({"fc.weight": torch.ones(3, 2), "fc.bias": torch.zeros(2)}),
        "tensor 'fc.weight': expected shape [2, 3], got [3, 2]",
        id="wrong-shape",
    ),
    pytest.param(
        serde.dump({"fc.weight": torch.ones(2, 3, dtype=torch.float64), "fc.bias": torch.zeros(2)}),
        "tensor 'fc.weight': expected dtype float32, got float64",
        id="wrong-dtype",
    ),
    pytest.param(
        serde.dump({"fc.weight": torch.ones(2, 3), "fc.bias": torch.tensor([0.0, float("nan")])}),
        "tensor 'fc.bias' contains 1 NaN",
        id="nan",
    ),
    pytest.param(
        serde.dump({"fc.weight": torch.full((2, 3), float("-inf")), "fc.bias": torch.zeros(2)}),
        "tensor 'fc.weight' contains 6 Inf",
        id="inf",
    ),
    pytest.param(
        serde.dump(
            {"fc.weight": torch.ones(2, 3), "fc.bias": torch.tensor([float("nan"), float("inf")])}
        ),
        "tensor 'fc.bias' contains 1 NaN and 1 Inf",
        id="nan-and-inf",
    ),
    pytest.param(
        GOOD + b"\0" * LIMIT,
        f"payload is {len(GOOD) + LIMIT} bytes, over the limit of {LIMIT} bytes",
        id="over-max-bytes",
    ),
]


@pytest.mark.parametrize(("payload", "message"), BAD_PAYLOADS)
def test_bad_payload_is_refused_with_a_precise_message(payload: bytes, message: str) -> None:
    with pytest.raises(TensorPayloadError, match=re.escape(message)) as caught:
        serde.load(payload, expected=EXPECTED, max_bytes=LIMIT)

    # the HTTP layer maps it to 422 and plain ValueError handlers still catch it
    assert isinstance(caught.value, InvalidInput)
    assert isinstance(caught.value, ValueError)
    assert caught.value.status == 422


def test_the_good_payload_of_the_table_loads() -> None:
    loaded = serde.load(GOOD, expected=EXPECTED, max_bytes=LIMIT)

    assert list(loaded) == ["fc.weight", "fc.bias"]


def test_size_limit_is_checked_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_parsing(data: bytes) -> None:
        raise AssertionError("the header was parsed")

    monkeypatch.setattr(serde, "_parse_header", no_parsing)

    with pytest.raises(TensorPayloadError, match="over the limit of 10 bytes"):
        serde.load(GOOD, max_bytes=10)


def test_nothing_is_unpickled(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("serde must never unpickle")

    for target, name in [
        (pickle, "loads"),
        (pickle, "load"),
        (pickle, "Unpickler"),
        (torch, "load"),
    ]:
        monkeypatch.setattr(target, name, forbidden)

    for payload in (pickle.dumps({"w": 1}), torch_save_bytes()):
        with pytest.raises(TensorPayloadError, match="not a safetensors payload"):
            serde.load(payload, max_bytes=LIMIT)
    assert list(serde.load(GOOD, max_bytes=LIMIT)) == ["fc.weight", "fc.bias"]


def test_deeply_nested_header_is_refused_not_crashing() -> None:
    header = b"{" + b'"a":' * 1 + b"[" * 100_000 + b"]" * 100_000 + b"}"
    payload = struct.pack("<Q", len(header)) + header

    with pytest.raises(TensorPayloadError, match="header is not valid UTF-8 JSON"):
        serde.load(payload, max_bytes=LIMIT)


def test_load_refuses_non_bytes() -> None:
    with pytest.raises(TypeError, match="expected bytes, got str"):
        serde.load("not bytes", max_bytes=LIMIT)  # type: ignore[arg-type]


def test_header_info_validates_too() -> None:
    with pytest.raises(TensorPayloadError, match=re.escape("(looks like a pickle)")):
        serde.header_info(pickle.dumps([1, 2, 3]))


# -- files -------------------------------------------------------------------------------------


def test_load_file_checked(tmp_path: Path) -> None:
    path = tmp_path / "diff.safetensors"
    path.write_bytes(GOOD)

    loaded = serde.load_file_checked(path, expected=EXPECTED, max_bytes=LIMIT)

    assert list(loaded) == ["fc.weight", "fc.bias"]


def test_load_file_checked_refuses_a_big_file_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "big.safetensors"
    path.write_bytes(GOOD)

    with pytest.raises(TensorPayloadError, match=f"payload is {len(GOOD)} bytes, over the limit"):
        serde.load_file_checked(path, max_bytes=len(GOOD) - 1)
