import pytest

from edgepilot.meta import ModelMeta


def test_json_round_trip_keeps_every_field():
    meta = ModelMeta(name="m", labels=("a", "b"), input_size=(24, 32), layout="NHWC",
                     color="BGR", mean=(0.1, 0.2, 0.3), std=(1, 2, 3), output="probs",
                     extra={"dataset": "x"})
    back = ModelMeta.from_json(meta.to_json())
    assert back == meta
    assert back.extra == {"dataset": "x"}
    assert back.input_size == (24, 32) and isinstance(back.labels, tuple)


def test_unknown_keys_from_newer_writers_are_kept_in_extra():
    meta = ModelMeta.from_dict({"name": "m", "labels": ["a"], "input_size": [8, 8],
                                "future_field": 3})
    assert meta.extra["future_field"] == 3


@pytest.mark.parametrize("field,value,needle", [
    ("layout", "CHW", "NCHW, NHWC, NC"),
    ("color", "RGBA", "RGB, BGR, GRAY"),
    ("labels", (), "empty"),
    ("std", (0, 1, 1), "std > 0"),
])
def test_invalid_values_name_the_valid_ones(field, value, needle):
    kwargs = {"name": "m", "labels": ("a",), "input_size": (8, 8), field: value}
    with pytest.raises(ValueError, match=needle):
        ModelMeta(**kwargs)


def test_replace_changes_only_what_is_asked():
    meta = ModelMeta(name="m", labels=("a",), input_size=(8, 8))
    nhwc = meta.replace(layout="NHWC")
    assert nhwc.layout == "NHWC" and nhwc.labels == meta.labels and meta.layout == "NCHW"


def test_whole_number_labels_become_text_and_other_values_are_refused():
    import numpy as np

    # Digit classes as numbers, from Python or numpy, are their text.
    assert ModelMeta(name="d", labels=range(3), input_size=(8, 8)).labels == ("0", "1", "2")
    assert ModelMeta(name="d", labels=np.arange(2), input_size=(8, 8)).labels == ("0", "1")
    # A nested list or a bool is corruption, not a label: str() would hide it.
    for bad in ([["a", "b"]], [True], [1.5]):
        with pytest.raises(ValueError, match="labels must hold text"):
            ModelMeta(name="d", labels=bad, input_size=(8, 8))
