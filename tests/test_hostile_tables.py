"""Hostile tables and HDF5 files: every input gives checked records, rejections with reasons, or one user error.

Labels with control characters or line breaks are rejected (never a class of their own); a byte order mark is
not part of the first column or record in any text format; one odd row cannot change the feature set; reasons
name columns; HDF5 dtypes a role cannot hold are one sentence naming the dataset and the dtype.
"""

import csv
import io
import json
import math

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from broken_corpus import digit_image
from trainflow.config import IngestConfig
from trainflow.data.checks.record_validation import hidden_character
from trainflow.data.sources.hdf5 import close_hdf5_files
from trainflow.data.sources.read_source import read_source
from trainflow.errors import UserFacingError

BOM = "\ufeff"
COLUMN_RULES = ("feature_", "target_", "label_", "group_", "id_")  # rules whose reason must name the column


def needs(task: str):
    from trainflow.tasks import get_task

    return get_task(task).record_needs


def csv_text(header, rows):
    out = io.StringIO()
    # "\r\n" makes the writer quote cells holding a bare "\r" too (it quotes only lineterminator characters);
    # with "\n" such a cell is written bare, and a bare "\r" is a line break to any CSV reader.
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def test_labels_with_control_characters_or_line_breaks_are_rejected_not_new_classes(tmp_path):
    table = tmp_path / "t.csv"
    rows = [[i, "cat" if i % 2 else "dog"] for i in range(8)]
    rows += [[20, "ca\x07t"], [21, "do\ng"], [22, "cat\u2028"], [23, "\x1b[31mdog"], [24, "dog\r\ncat"]]
    table.write_text(csv_text(["x", "species"], rows), newline="")
    data = read_source(IngestConfig(table=str(table), label_column="species"), needs("classification"))
    assert data.class_names == ["cat", "dog"]
    assert len(data.records) == 8
    assert {r.rule for r in data.rejected} == {"label_control_character"} and len(data.rejected) == 5
    assert all("label column 'species'" in r.reason and "U+" in r.reason for r in data.rejected)


def test_ids_and_groups_with_control_characters_are_rejected_naming_the_column(tmp_path):
    table = tmp_path / "t.jsonl"
    lines = [{"x": i, "y": i * 2.0, "key": f"r{i}", "site": "a"} for i in range(4)]
    lines += [{"x": 9, "y": 1.0, "key": "r\x009", "site": "a"}, {"x": 8, "y": 1.0, "key": "r8", "site": "b\nc"}]
    table.write_text("".join(json.dumps(line) + "\n" for line in lines))
    data = read_source(IngestConfig(table=str(table), target_columns=["y"], id_column="key", group_column="site"),
                       needs("regression"))
    assert len(data.records) == 4
    assert sorted((r.rule, "column 'key'" in r.reason or "column 'site'" in r.reason) for r in data.rejected) == [
        ("group_invalid", True), ("id_invalid", True)]


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_a_byte_order_mark_does_not_cost_the_first_column_or_record(tmp_path, fmt):
    rows = [{"a": i, "b": i % 3, "y": i * 0.5} for i in range(6)]
    if fmt == "jsonl":
        text = "".join(json.dumps(r) + "\n" for r in rows)
    else:
        sep = "," if fmt == "csv" else "\t"
        text = sep.join(rows[0]) + "\n" + "".join(sep.join(str(v) for v in r.values()) + "\n" for r in rows)
    path = tmp_path / f"t.{fmt}"
    path.write_bytes((BOM + text).encode("utf-8"))
    data = read_source(IngestConfig(table=str(path), target_columns=["y"]), needs("regression"))
    assert len(data.records) == 6 and data.rejected == []
    assert data.feature_names == ["a", "b"]


def test_a_byte_order_mark_in_image_folder_metadata_and_captions_json(tmp_path):
    root = tmp_path / "f"
    (root / "images").mkdir(parents=True)
    for i in range(3):
        digit_image(i).save(root / "images" / f"{i}.png")
    lines = [json.dumps({"file_name": f"images/{i}.png", "text": f"digit {i}"}) for i in range(3)]
    (root / "metadata.jsonl").write_bytes((BOM + "\n".join(lines) + "\n").encode())
    data = read_source(IngestConfig(dataset_dir=str(root)), needs("text_to_image"))
    assert len(data.records) == 3 and data.rejected == []
    layout = tmp_path / "layout"
    (layout / "train" / "images").mkdir(parents=True)
    digit_image(0).save(layout / "train" / "images" / "0.png")
    (layout / "train" / "captions.json").write_bytes((BOM + json.dumps({"0.png": "a zero"})).encode())
    data = read_source(IngestConfig(dataset_dir=str(layout)), needs("text_to_image"))
    assert [r.caption for r in data.records] == ["a zero"] and data.rejected == []


def test_one_rows_extra_key_leaves_the_feature_set_alone_with_a_warning(tmp_path):
    rows = [{"a": i * 0.5, "b": i % 4, "y": float(i)} for i in range(10)]
    rows[3]["zz"] = 7
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = read_source(IngestConfig(table=str(tmp_path / "t.jsonl"), target_columns=["y"]), needs("regression"))
    assert data.feature_names == ["a", "b"] and len(data.records) == 10 and data.rejected == []
    (warning,) = data.warnings
    assert warning.rule == "table_rare_keys" and "'zz' (1 of 10 rows)" in warning.message
    assert warning.examples == ("t.jsonl:4",)


def test_a_rare_key_named_in_feature_columns_is_used(tmp_path):
    rows = [{"a": float(i), "y": float(i)} for i in range(6)]
    rows[0]["zz"] = 1.0
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = read_source(IngestConfig(table=str(tmp_path / "t.jsonl"), target_columns=["y"], feature_columns=["a", "zz"]),
                       needs("regression"))
    assert len(data.records) == 1 and data.warnings == []
    assert {r.reason for r in data.rejected} == {"feature column 'zz' is missing"}


def test_reasons_name_feature_and_target_columns(tmp_path):
    (tmp_path / "t.csv").write_text("height,weight,price\n1,2,3\n1,heavy,4\n2,3,inf\n")
    data = read_source(IngestConfig(table=str(tmp_path / "t.csv"), target_columns=["price"]), needs("regression"))
    reasons = sorted(r.reason for r in data.rejected)
    assert reasons == ["feature column 'weight' is 'heavy' (str), not a number",
                       "target column 'price' is inf (float); it must be finite"]


def test_a_header_naming_a_column_twice_is_one_sentence(tmp_path):
    (tmp_path / "t.csv").write_text("a,b,a,y\n1,2,3,4\n")
    with pytest.raises(UserFacingError, match="names column 'a' more than once"):
        read_source(IngestConfig(table=str(tmp_path / "t.csv"), target_columns=["y"]), needs("regression"))


def _h5(path, **datasets):
    with h5py.File(path, "w") as handle:
        for name, value in datasets.items():
            if callable(value):
                value(handle, name)
            else:
                handle[name] = value
    return str(path)


def _vlen_ints(handle, name):
    data = handle.create_dataset(name, (4,), dtype=h5py.vlen_dtype(np.int64))
    for i in range(4):
        data[i] = np.arange(i + 1)


def _references(handle, name):
    handle["target_of_refs"] = np.zeros(4)
    refs = handle.create_dataset(name, (4,), dtype=h5py.ref_dtype)
    for i in range(4):
        refs[i] = handle["target_of_refs"].ref


COMPOUND = np.zeros(4, dtype=[("left", "f4"), ("right", "i8")])
HOSTILE_FEATURES = [
    ("compound", COMPOUND, "compound (left, right)"),
    ("complex", np.ones((4, 2), np.complex128), "complex128"),
    ("vlen ints", _vlen_ints, "variable-length sequence of int64"),
    ("vlen strings", np.array([b"a", b"b", b"c", b"d"], dtype=object), "string"),
    ("fixed strings", np.array([b"1", b"2", b"3", b"4"]), "string"),
    ("references", _references, "object reference"),
    ("opaque", np.zeros(4, dtype="V3"), "|V3"),
    ("booleans", np.array([True, False, True, False]), "bool"),
]


@pytest.mark.parametrize("what, value, dtype_text", HOSTILE_FEATURES, ids=[h[0] for h in HOSTILE_FEATURES])
def test_hdf5_feature_datasets_of_exotic_dtypes_are_one_sentence(tmp_path, what, value, dtype_text):
    path = _h5(tmp_path / "f.h5", odd=value, y=np.arange(4.0))
    try:
        with pytest.raises(UserFacingError) as caught:
            read_source(IngestConfig(hdf5=path, feature_columns=["odd"], target_columns=["y"]), needs("regression"))
    finally:
        close_hdf5_files()
    message = str(caught.value)
    assert f"HDF5 dataset 'odd' in {path} has dtype {dtype_text}, which cannot hold features" in message
    assert "\n" not in message


@pytest.mark.parametrize("column, value, role", [
    ("label_column", COMPOUND, "labels"), ("label_column", np.ones(4, np.complex64), "labels"),
    ("id_column", np.arange(4.0), "record ids"), ("group_column", _vlen_ints, "groups"),
    ("target_columns", np.array([b"1", b"2", b"3", b"4"], dtype=object), "targets"),
])
def test_hdf5_label_id_group_and_target_dtypes_are_checked(tmp_path, column, value, role):
    path = _h5(tmp_path / "f.h5", x=np.arange(8.0).reshape(4, 2), odd=value)
    config = {"hdf5": path, "feature_columns": ["x"], column: ["odd"] if column == "target_columns" else "odd"}
    try:
        with pytest.raises(UserFacingError, match=f"dataset 'odd' in .* has dtype .*, which cannot hold {role}"):
            read_source(IngestConfig(**config), needs("classification" if column == "label_column" else "regression"))
    finally:
        close_hdf5_files()


def test_hdf5_string_labels_and_small_numeric_dtypes_are_read(tmp_path):
    labels = np.array([b"cat", b"dog", b"ca\x07t", b"dog"], dtype=object)
    path = _h5(tmp_path / "f.h5", x=np.arange(8, dtype=np.float16).reshape(4, 2), y=labels)
    try:
        data = read_source(IngestConfig(hdf5=path, feature_columns=["x"], label_column="y", class_names=["cat", "dog"]),
                           needs("classification"))
    finally:
        close_hdf5_files()
    assert [r.label for r in data.records] == [0, 1, 1]
    assert [r.rule for r in data.rejected] == ["label_control_character"]


def test_hdf5_images_of_another_dtype_are_one_sentence(tmp_path):
    path = _h5(tmp_path / "i.h5", file_name=np.zeros((3, 8, 8), np.complex64))
    try:
        with pytest.raises(UserFacingError, match=r"'file_name' in .* has dtype complex64, which cannot hold images"):
            read_source(IngestConfig(hdf5=path), needs("classification"))
    finally:
        close_hdf5_files()


# --- property-based: any table is records + reasons, or one user error -----------------------------------------

HOSTILE_CHARS = st.sampled_from(["\x00", "\x07", "\x1b", "\n", "\r", "\r\n", "\u2028", BOM, "\ufffd", ",", '"', "\t"])
CELLS = st.one_of(
    st.integers(-5, 5).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr), st.just(""),
    st.sampled_from(["cat", "dog", "1", "2", "nan", "1e999"]),
    st.tuples(st.sampled_from(["cat", "dog", "3"]), HOSTILE_CHARS, st.sampled_from(["", "x", "cat"])).map("".join),
    st.text(max_size=6),
)
HEADER = ["a", "b", "label", "y"]


def _check_outcome(read, lines_of_rows: int | None):
    """Run `read`; it returns checked data or raises one clear UserFacingError, nothing else."""
    try:
        data = read()
    except UserFacingError as error:
        assert str(error) and "Traceback" not in str(error)
        return None
    finally:
        close_hdf5_files()
    if lines_of_rows is not None:
        assert len(data.records) + len(data.rejected) == lines_of_rows
    for name in data.class_names or []:
        assert hidden_character(name) is None, f"class name {name!r} holds a control character"
    for record in data.records:
        assert all(math.isfinite(v) for v in record.features + record.targets)
        assert record.label is None or 0 <= record.label < len(data.class_names)
    for rejected in data.rejected:
        assert rejected.reason.strip()
        if rejected.rule.startswith(COLUMN_RULES):
            assert "column '" in rejected.reason or "columns '" in rejected.reason, rejected


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.lists(CELLS, min_size=3, max_size=5), min_size=0, max_size=8), bom=st.booleans())
def test_any_csv_table_is_records_or_reasons(tmp_path, rows, bom):
    path = tmp_path / "hostile.csv"
    text = csv_text(HEADER, rows)
    path.write_bytes(((BOM if bom else "") + text).encode("utf-8", "surrogatepass"))
    config = IngestConfig(table=str(path), label_column="label", target_columns=["y"])
    has_nul = any("\x00" in cell for row in rows for cell in row)
    kept_rows = sum(1 for row in rows if any(cell.strip() for cell in row))
    _check_outcome(lambda: read_source(config, needs("classification")), None if has_nul else kept_rows)


JSON_VALUES = st.one_of(CELLS, st.integers(), st.floats(), st.none(), st.booleans(),
                        st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=1))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.dictionaries(st.sampled_from([*HEADER, "extra", "ötherkey"]), JSON_VALUES, max_size=6),
                     min_size=1, max_size=8),
       bom=st.booleans(), junk_line=st.sampled_from(["", "not json", "[1, 2]", "{\"a\": 1"]))
def test_any_jsonl_table_is_records_or_reasons(tmp_path, rows, bom, junk_line):
    path = tmp_path / "hostile.jsonl"
    lines = [json.dumps(row) for row in rows] + ([junk_line] if junk_line else [])
    path.write_bytes(((BOM if bom else "") + "\n".join(lines) + "\n").encode("utf-8", "surrogatepass"))
    config = IngestConfig(table=str(path), label_column="label", target_columns=["y"])
    _check_outcome(lambda: read_source(config, needs("classification")), len(lines))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(3, 12), odd_at=st.integers(0, 11), extra=st.text(min_size=1, max_size=8),
       value=st.one_of(st.integers(), st.floats(allow_nan=False), st.text(max_size=3)))
def test_one_odd_row_never_changes_the_features_of_the_others(tmp_path, n, odd_at, extra, value):
    rows = [{"a": float(i), "b": i % 3, "y": i * 2.0} for i in range(n)]
    if extra not in rows[0]:
        rows[odd_at % n][extra] = value
    path = tmp_path / "odd.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = read_source(IngestConfig(table=str(path), target_columns=["y"]), needs("regression"))
    assert data.feature_names == ["a", "b"] and len(data.records) == n and data.rejected == []
