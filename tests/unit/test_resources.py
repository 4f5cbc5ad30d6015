"""Unit tests for `rayfleet.resources`: validation, memory strings, arithmetic, fit and Ray's names."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from rayfleet.errors import InvalidResourcesError
from rayfleet.resources import ACCELERATOR_REQUEST, Resources, accelerator_models, parse_memory

GiB = 1024**3
MiB = 1024**2

# ----- validation -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"cpu": -1}, id="negative-cpu"),
        pytest.param({"gpu": -0.5}, id="negative-gpu"),
        pytest.param({"cpu": math.nan}, id="nan-cpu"),
        pytest.param({"gpu": math.inf}, id="inf-gpu"),
        pytest.param({"cpu": -math.inf}, id="minus-inf-cpu"),
        pytest.param({"cpu": True}, id="bool-cpu"),
        pytest.param({"gpu": False}, id="bool-gpu"),
        pytest.param({"cpu": "2"}, id="string-cpu"),
        pytest.param({"cpu": None}, id="none-cpu"),
        pytest.param({"gpu": 1.5}, id="fractional-gpu-above-1"),
        pytest.param({"gpu": 2.25}, id="fractional-gpu-above-2"),
        pytest.param({"memory": -1}, id="negative-memory"),
        pytest.param({"memory": math.nan}, id="nan-memory"),
        pytest.param({"memory": True}, id="bool-memory"),
        pytest.param({"memory": "lots"}, id="bad-memory-string"),
        pytest.param({"custom": {"TPU": -1}}, id="negative-custom"),
        pytest.param({"custom": {"TPU": math.nan}}, id="nan-custom"),
        pytest.param({"custom": {"TPU": True}}, id="bool-custom"),
        pytest.param({"custom": {"TPU": "4"}}, id="string-custom"),
        pytest.param({"custom": {"": 1}}, id="empty-custom-key"),
        pytest.param({"custom": {"1TPU": 1}}, id="custom-key-starts-with-digit"),
        pytest.param({"custom": {"my tpu": 1}}, id="custom-key-with-space"),
        pytest.param({"custom": {"a:b:c": 1}}, id="custom-key-two-colons"),
        pytest.param({"custom": {"vendor:": 1}}, id="custom-key-empty-after-colon"),
        pytest.param({"custom": {3: 1}}, id="custom-key-not-a-string"),
        pytest.param({"custom": ["TPU"]}, id="custom-not-a-mapping"),
        pytest.param({"custom": {"CPU": 1}}, id="reserved-CPU-in-custom"),
        pytest.param({"custom": {"GPU": 1}}, id="reserved-GPU-in-custom"),
        pytest.param({"custom": {"memory": 1}}, id="reserved-memory-in-custom"),
        pytest.param({"custom": {"object_store_memory": 1}}, id="reserved-object-store-in-custom"),
        pytest.param({"custom": {"accelerator_type:A100": 0.001}}, id="accelerator-key-in-custom"),
        pytest.param({"accelerators": {"A100"}}, id="accelerators-without-gpu"),
        pytest.param({"gpu": 1, "accelerators": {"A 100"}}, id="malformed-accelerator-model"),
        pytest.param({"gpu": 1, "accelerators": {""}}, id="empty-accelerator-model"),
        pytest.param({"gpu": 1, "accelerators": 5}, id="accelerators-not-a-collection"),
        pytest.param({"cpus": 2}, id="unknown-field"),
    ],
)
def test_invalid_resources_raise_invalid_resources_error_with_a_fix(kwargs):
    with pytest.raises(InvalidResourcesError) as info:
        Resources(**kwargs)
    assert "To fix:" in str(info.value)


def test_invalid_resources_error_is_a_value_error_for_callers_that_catch_those():
    with pytest.raises(ValueError):
        Resources(cpu=-1)


def test_invalid_resources_message_names_the_offending_field():
    with pytest.raises(InvalidResourcesError, match="cpu"):
        Resources(cpu=-1)
    with pytest.raises(InvalidResourcesError, match=r"gpu=1\.5"):
        Resources(gpu=1.5)
    with pytest.raises(InvalidResourcesError, match="'CPU'"):
        Resources(custom={"CPU": 1})
    with pytest.raises(InvalidResourcesError, match=r"accelerators=\{'A100'\}"):
        Resources(gpu=1, custom={"accelerator_type:A100": 1})


@pytest.mark.parametrize(
    ("kwargs", "field", "expected"),
    [
        pytest.param({"gpu": 0.5}, "gpu", 0.5, id="fractional-gpu-below-1"),
        pytest.param({"gpu": 1}, "gpu", 1.0, id="one-gpu"),
        pytest.param({"gpu": 2}, "gpu", 2.0, id="two-gpus"),
        pytest.param({"gpu": 8.0}, "gpu", 8.0, id="whole-float-gpus"),
        pytest.param({"cpu": 0.25}, "cpu", 0.25, id="fractional-cpu"),
        pytest.param({"cpu": 0}, "cpu", 0.0, id="zero-cpu"),
        pytest.param({"memory": 1024}, "memory", 1024, id="memory-in-bytes"),
        pytest.param({"memory": "4GiB"}, "memory", 4 * GiB, id="memory-string"),
    ],
)
def test_valid_amounts_are_accepted_as_floats_and_bytes(kwargs, field, expected):
    value = getattr(Resources(**kwargs), field)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    "key",
    ["TPU", "my_resource", "vendor:thing", "a.b-c", "_private", "Vendor.X:model-1.2"],
)
def test_well_formed_custom_keys_are_accepted(key):
    assert Resources(custom={key: 2}).custom == {key: 2.0}


def test_custom_zero_amounts_are_dropped_and_keys_sorted():
    r = Resources(custom={"zeta": 1, "alpha": 2, "unused": 0})
    assert list(r.custom.items()) == [("alpha", 2.0), ("zeta", 1.0)]


def test_accelerators_accept_a_comma_separated_string():
    assert Resources(gpu=1, accelerators="A100, H100").accelerators == frozenset({"A100", "H100"})


def test_accelerators_none_means_any_model():
    assert Resources(gpu=1, accelerators=None).accelerators == frozenset()


def test_accelerators_with_a_fractional_gpu_are_accepted():
    r = Resources(gpu=0.5, accelerators={"L4"})
    assert (r.gpu, r.accelerators) == (0.5, frozenset({"L4"}))


def test_default_resources_are_empty():
    assert Resources().is_empty
    assert not Resources(custom={"TPU": 1}).is_empty


# ----- memory strings ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("4GiB", 4 * GiB, id="GiB"),
        pytest.param("512MiB", 512 * MiB, id="MiB"),
        pytest.param("2GB", 2_000_000_000, id="GB-is-decimal"),
        pytest.param("1.5G", 1_500_000_000, id="fractional-G"),
        pytest.param("1.5GiB", 3 * GiB // 2, id="fractional-GiB"),
        pytest.param("4gib", 4 * GiB, id="case-insensitive"),
        pytest.param(" 4 GiB ", 4 * GiB, id="spaces"),
        pytest.param("1Ki", 1024, id="Ki-without-B"),
        pytest.param("3K", 3000, id="K"),
        pytest.param("1TiB", 1024**4, id="TiB"),
        pytest.param("100B", 100, id="bytes-suffix"),
        pytest.param("100", 100, id="plain-digits"),
        pytest.param("4.35GB", 4_350_000_000, id="decimal-fraction-not-rounded-down-by-float-error"),
        pytest.param(2048, 2048, id="int"),
        pytest.param(10.9, 10, id="float-rounded-down"),
        pytest.param(0, 0, id="zero"),
    ],
)
def test_parse_memory_understands_units(value, expected):
    assert parse_memory(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty"),
        pytest.param("GiB", id="unit-only"),
        pytest.param("4 gigs", id="unknown-unit"),
        pytest.param("-1GiB", id="negative-string"),
        pytest.param("4GiB8", id="trailing-junk"),
        pytest.param("1e9", id="exponent"),
        pytest.param("4XB", id="bad-prefix"),
        pytest.param(-1, id="negative-number"),
        pytest.param(math.nan, id="nan"),
        pytest.param(math.inf, id="inf"),
        pytest.param(True, id="bool"),
        pytest.param(None, id="none"),
    ],
)
def test_parse_memory_rejects_what_is_not_an_amount(value):
    with pytest.raises(InvalidResourcesError) as info:
        parse_memory(value)
    assert "To fix:" in str(info.value)


# ----- arithmetic -------------------------------------------------------------------------------------------------


def test_adding_resources_sums_every_field_and_unions_custom_keys_and_models():
    a = Resources(cpu=1, gpu=1, memory="1GiB", custom={"TPU": 1}, accelerators={"A100"})
    b = Resources(cpu=2.5, gpu=1, memory="512MiB", custom={"TPU": 2, "disk": 1}, accelerators={"H100"})
    assert a + b == Resources(
        cpu=3.5,
        gpu=2,
        memory=GiB + 512 * MiB,
        custom={"TPU": 3, "disk": 1},
        accelerators={"A100", "H100"},
    )


def test_adding_two_fractional_gpus_that_exceed_one_without_being_whole_is_rejected():
    with pytest.raises(InvalidResourcesError):
        Resources(gpu=0.75) + Resources(gpu=0.75)


def test_multiplying_by_an_int_scales_amounts_and_keeps_models():
    r = Resources(cpu=1.5, gpu=1, memory=100, custom={"TPU": 2}, accelerators={"A100"})
    expected = Resources(cpu=4.5, gpu=3, memory=300, custom={"TPU": 6}, accelerators={"A100"})
    assert r * 3 == expected
    assert 3 * r == expected


def test_multiplying_by_zero_gives_nothing_for_models_free_requests():
    assert (Resources(cpu=2, custom={"TPU": 1}) * 0).is_empty


@pytest.mark.parametrize("n", [-1, 1.5, "2"], ids=["negative", "float", "string"])
def test_multiplying_by_anything_but_a_whole_number_is_rejected(n):
    with pytest.raises(InvalidResourcesError, match="To fix:"):
        Resources(cpu=1) * n


def test_arithmetic_leaves_its_operands_unchanged():
    a, b = Resources(cpu=1, custom={"TPU": 1}), Resources(cpu=2, custom={"TPU": 1})
    _ = a + b, a * 4
    assert a == Resources(cpu=1, custom={"TPU": 1})
    assert b == Resources(cpu=2, custom={"TPU": 1})


# ----- fits -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "free", "accelerator", "fits"),
    [
        pytest.param(Resources(cpu=2), {"CPU": 2.0}, None, True, id="exact-fit"),
        pytest.param(Resources(cpu=2), {"CPU": 1.9999999999}, None, True, id="float-noise-tolerated"),
        pytest.param(Resources(cpu=2), {"CPU": 1.5}, None, False, id="too-few-cpus"),
        pytest.param(Resources(), {}, None, True, id="empty-request-fits-anywhere"),
        pytest.param(Resources(gpu=1), {"CPU": 8}, None, False, id="missing-gpu-key"),
        pytest.param(Resources(memory="4GiB"), {"memory": 4 * GiB}, None, True, id="memory-exact"),
        pytest.param(Resources(memory="4GiB"), {"memory": 3 * GiB}, None, False, id="memory-short"),
        pytest.param(Resources(custom={"TPU": 4}), {"TPU": 4}, None, True, id="custom-fits"),
        pytest.param(Resources(custom={"TPU": 4}), {"CPU": 64}, None, False, id="custom-missing"),
        pytest.param(
            Resources(gpu=1, accelerators={"A100", "H100"}),
            {"GPU": 1, "accelerator_type:H100": 1},
            None,
            True,
            id="any-allowed-model-will-do",
        ),
        pytest.param(
            Resources(gpu=1, accelerators={"A100", "H100"}),
            {"GPU": 1, "accelerator_type:L4": 1},
            None,
            False,
            id="no-allowed-model",
        ),
        pytest.param(
            Resources(gpu=1, accelerators={"A100", "H100"}),
            {"GPU": 1, "accelerator_type:H100": 1},
            "A100",
            False,
            id="given-model-absent",
        ),
        pytest.param(
            Resources(gpu=1, accelerators={"A100", "H100"}),
            {"GPU": 1, "accelerator_type:A100": 1},
            "A100",
            True,
            id="given-model-present",
        ),
        pytest.param(
            Resources(gpu=1),
            {"GPU": 1, "accelerator_type:A100": 1},
            "H100",
            False,
            id="model-given-for-any-model-request",
        ),
        pytest.param(
            Resources(gpu=2, accelerators={"A100"}),
            {"GPU": 1, "accelerator_type:A100": 1},
            None,
            False,
            id="right-model-too-few-gpus",
        ),
    ],
)
def test_fits_checks_every_ray_key_and_the_model(request_, free, accelerator, fits):
    assert request_.fits(free, accelerator) is fits


# ----- Ray's names ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resources", "accelerator", "expected"),
    [
        pytest.param(Resources(), None, {}, id="empty"),
        pytest.param(Resources(cpu=2), None, {"CPU": 2.0}, id="cpu-only"),
        pytest.param(
            Resources(cpu=1, gpu=0.5, memory=1024, custom={"TPU": 4}),
            None,
            {"CPU": 1.0, "GPU": 0.5, "memory": 1024.0, "TPU": 4.0},
            id="all-fields",
        ),
        pytest.param(
            Resources(cpu=1, gpu=1, accelerators={"A100", "H100"}),
            "A100",
            {"CPU": 1.0, "GPU": 1.0, "accelerator_type:A100": ACCELERATOR_REQUEST},
            id="with-chosen-model",
        ),
        pytest.param(
            Resources(cpu=1, gpu=1, accelerators={"A100", "H100"}),
            None,
            {"CPU": 1.0, "GPU": 1.0},
            id="models-undecided",
        ),
    ],
)
def test_to_ray_uses_ray_resource_names(resources, accelerator, expected):
    assert resources.to_ray(accelerator) == expected


@pytest.mark.parametrize(
    ("resources", "accelerator", "expected"),
    [
        pytest.param(Resources(), None, {}, id="nothing-reserved"),
        pytest.param(Resources(cpu=0.5), None, {"entrypoint_num_cpus": 0.5}, id="cpu"),
        pytest.param(
            Resources(cpu=2, gpu=1, memory="1GiB"),
            None,
            {"entrypoint_num_cpus": 2.0, "entrypoint_num_gpus": 1.0, "entrypoint_memory": GiB},
            id="cpu-gpu-memory",
        ),
        pytest.param(
            Resources(cpu=1, custom={"TPU": 4}),
            None,
            {"entrypoint_num_cpus": 1.0, "entrypoint_resources": {"TPU": 4.0}},
            id="custom",
        ),
        pytest.param(
            Resources(gpu=1, custom={"TPU": 1}, accelerators={"A100", "H100"}),
            "H100",
            {"entrypoint_num_gpus": 1.0, "entrypoint_resources": {"TPU": 1.0, "accelerator_type:H100": 0.001}},
            id="chosen-model-joins-custom",
        ),
        pytest.param(
            Resources(gpu=1),
            "L4",
            {"entrypoint_num_gpus": 1.0, "entrypoint_resources": {"accelerator_type:L4": 0.001}},
            id="model-for-an-any-model-request",
        ),
    ],
)
def test_entrypoint_kwargs_are_exactly_what_submit_job_needs(resources, accelerator, expected):
    kwargs = resources.entrypoint_kwargs(accelerator)
    assert kwargs == expected
    assert isinstance(kwargs.get("entrypoint_memory", 0), int)


@pytest.mark.parametrize("accelerator", [None, "L4"], ids=["undecided", "not-allowed"])
def test_entrypoint_kwargs_need_one_of_the_allowed_models(accelerator):
    r = Resources(gpu=1, accelerators={"A100", "H100"})
    with pytest.raises(InvalidResourcesError, match="To fix:"):
        r.entrypoint_kwargs(accelerator)


def test_entrypoint_kwargs_do_not_alias_the_custom_mapping():
    r = Resources(custom={"TPU": 1})
    r.entrypoint_kwargs()["entrypoint_resources"]["TPU"] = 99
    assert r.custom == {"TPU": 1.0}


def test_accelerator_models_lists_models_from_ray_keys():
    assert accelerator_models(["CPU", "accelerator_type:H100", "GPU", "accelerator_type:A100"]) == ["A100", "H100"]


@pytest.mark.parametrize(
    ("resources", "text"),
    [
        pytest.param(Resources(), "nothing", id="empty"),
        pytest.param(
            Resources(cpu=2, gpu=1, memory="4GiB", accelerators={"H100", "A100"}),
            "2 CPU, 1 GPU (A100|H100), 4.0 GiB",
            id="full",
        ),
        pytest.param(Resources(memory="512MiB", custom={"TPU": 4}), "512 MiB, 4 TPU", id="small-memory-custom"),
    ],
)
def test_describe_is_short_and_stable(resources, text):
    assert resources.describe() == text


# ----- value semantics --------------------------------------------------------------------------------------------


def test_equal_requests_hash_equal_regardless_of_custom_key_order():
    a = Resources(cpu=1, custom={"a": 1, "b": 2}, accelerators=None)
    b = Resources(cpu=1.0, custom={"b": 2, "a": 1}, accelerators=frozenset())
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1


def test_different_requests_are_distinct_keys():
    assert (
        len({Resources(cpu=1), Resources(cpu=2), Resources(cpu=1, gpu=1), Resources(gpu=1, accelerators="A100")}) == 4
    )


@pytest.mark.parametrize("field", ["cpu", "gpu", "memory", "custom", "accelerators"])
def test_resources_are_frozen(field):
    r = Resources(cpu=1, gpu=1, memory=10, custom={"TPU": 1}, accelerators={"A100"})
    before = r.model_dump()
    with pytest.raises(ValidationError):
        setattr(r, field, getattr(Resources(cpu=3), field))
    assert r.model_dump() == before


def test_custom_cannot_be_changed_in_place():
    r = Resources(custom={"TPU": 1})
    with pytest.raises(TypeError):
        r.custom["TPU"] = 5


def test_copy_with_replaces_fields_and_leaves_the_original():
    r = Resources(cpu=1, gpu=1, custom={"TPU": 1}, accelerators={"A100"})
    copy = r.copy_with(cpu=4, memory="1GiB")
    assert copy == Resources(cpu=4, gpu=1, memory=GiB, custom={"TPU": 1}, accelerators={"A100"})
    assert r == Resources(cpu=1, gpu=1, custom={"TPU": 1}, accelerators={"A100"})


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"cpu": -1}, id="negative"),
        pytest.param({"gpu": 1.5}, id="fractional-gpu"),
        pytest.param({"gpu": 0}, id="drops-gpu-but-keeps-models"),
        pytest.param({"custom": {"CPU": 1}}, id="reserved-key"),
    ],
)
def test_copy_with_validates_the_result(overrides):
    with pytest.raises(InvalidResourcesError, match="To fix:"):
        Resources(cpu=1, gpu=1, accelerators={"A100"}).copy_with(**overrides)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(None, Resources(), id="none"),
        pytest.param({"cpu": 2, "memory": "1GiB"}, Resources(cpu=2, memory=GiB), id="mapping"),
        pytest.param(Resources(gpu=1), Resources(gpu=1), id="resources"),
    ],
)
def test_of_accepts_resources_mappings_and_none(value, expected):
    assert Resources.of(value) == expected


def test_of_returns_the_same_object_for_resources():
    r = Resources(cpu=1)
    assert Resources.of(r) is r


@pytest.mark.parametrize("value", [3, "cpu=2", [("cpu", 2)]], ids=["int", "string", "list"])
def test_of_rejects_what_is_not_a_request(value):
    with pytest.raises(InvalidResourcesError, match="To fix:"):
        Resources.of(value)
