"""Tests of atom3d.io.results: round trip, crash safety, resume and refusal of bad files."""

import hashlib
import math

import h5py
import numpy as np
import pytest

from atom3d.errors import InputFileError
from atom3d.io.results import (
    FORMAT,
    MAP_NAMES,
    ResultsWriter,
    open_results,
    partial_path,
    read_results,
    sha256_file,
    to_float16,
)

H, W = 6, 9
ATTRS = {
    "source": "series.emd",
    "source_sha256": "a" * 64,
    "model": "default",
    "model_sha256": "b" * 64,
    "pixel_size_A": 0.05,
}
EVENTS = [
    {"frame": 1, "track": 0, "species": "Ce", "kind": "depth_change",
     "depth_before": 3, "depth_after": 2, "confidence": 0.8},
    {"frame": 2, "track": 1, "species": "O", "kind": "vanished",
     "depth_before": 1, "depth_after": 0, "confidence": 0.6},
]


def frame_data(i: int) -> dict:
    """Deterministic, distinct content for frame ``i``: maps, columns and a frame row."""
    rng = np.random.default_rng(i)
    n = 2 + i  # a different number of columns per frame
    species = np.array(["Ce", "O"] * n)[:n]
    columns = {
        "x": rng.uniform(0, W * 0.05, n), "y": rng.uniform(0, H * 0.05, n),
        "depth": rng.integers(1, 8, n), "confidence": rng.uniform(0, 1, n), "species": species,
    }
    return {
        "ce_depth": rng.integers(0, 8, (H, W)), "ce_confidence": rng.uniform(0, 1, (H, W)),
        "o_depth": rng.integers(0, 8, (H, W)), "o_confidence": rng.uniform(0, 1, (H, W)),
        "columns": columns,
        "frame_row": {"valid": bool(i % 3), "n_ce": int((species == "Ce").sum()),
                      "n_o": int((species == "O").sum()), "area_A2": 10.0 + i},
    }


def post_process(writer: ResultsWriter) -> None:
    """What a caller does once all frames are written: tracks, drift, events."""
    cols = writer.read_columns()
    writer.set_tracks(np.arange(len(cols["x"])) % 3)
    n = len(writer.read_frames()["frame"])
    writer.update_frames({"drift_x": np.linspace(0, 1, n), "drift_y": -np.linspace(0, 1, n)})
    writer.write_events(EVENTS)


def write_run(path, frames, n_frames, *, resume=False, finalize=True):
    """Write ``frames`` (skipping done ones) and optionally post-process and finalize."""
    with ResultsWriter(path, shape=(H, W), n_frames=n_frames, attrs=ATTRS, resume=resume) as w:
        for i in frames:
            if i not in w.done_frames:
                w.write_frame(i, **frame_data(i))
        if finalize:
            post_process(w)
            w.finalize()
        return w


def assert_same_results(a: dict, b: dict) -> None:
    """Equal maps, tables and attrs (except the creation time)."""
    for name in MAP_NAMES:
        np.testing.assert_array_equal(a["maps"][name], b["maps"][name])
    for table in ("columns", "frames", "events"):
        assert list(a[table]) == list(b[table])
        for field in a[table]:
            np.testing.assert_array_equal(a[table][field], b[table][field])
            assert a[table][field].dtype == b[table][field].dtype
    attrs_a = {k: v for k, v in a["attrs"].items() if k != "created"}
    attrs_b = {k: v for k, v in b["attrs"].items() if k != "created"}
    assert attrs_a.keys() == attrs_b.keys()
    for key in attrs_a:
        assert attrs_a[key] == attrs_b[key] or (
            isinstance(attrs_a[key], float) and math.isnan(attrs_a[key]) and math.isnan(attrs_b[key])
        )


def test_round_trip(tmp_path):
    path = tmp_path / "out.h5"
    write_run(path, range(3), 3)
    assert path.is_file() and not partial_path(path).exists()
    res = read_results(path)

    attrs = res["attrs"]
    assert attrs["format"] == FORMAT and attrs["format_version"] == 1 and attrs["complete"]
    assert attrs["source_sha256"] == ATTRS["source_sha256"] and attrs["pixel_size_A"] == 0.05
    assert math.isnan(attrs["frame_interval_s"]) and "T" in attrs["created"]
    assert "partial_committed_rows" not in attrs

    data = [frame_data(i) for i in range(3)]
    for name in MAP_NAMES:
        expected = np.stack([d[name] for d in data])
        if name.endswith("confidence"):
            expected = expected.astype(np.float16)
            assert res["maps"][name].dtype == np.float16
        else:
            assert res["maps"][name].dtype == np.uint8
        np.testing.assert_array_equal(res["maps"][name], expected)

    cols = res["columns"]
    assert list(cols) == ["frame", "track", "species", "x", "y", "depth", "confidence"]
    expected_frame = np.concatenate([np.full(len(d["columns"]["x"]), i) for i, d in enumerate(data)])
    np.testing.assert_array_equal(cols["frame"], expected_frame)
    for key in ("x", "y", "confidence"):
        expected = np.concatenate([d["columns"][key] for d in data]).astype(np.float32)
        np.testing.assert_array_equal(cols[key], expected)
    np.testing.assert_array_equal(cols["species"], np.concatenate([d["columns"]["species"] for d in data]))
    np.testing.assert_array_equal(cols["track"], np.arange(len(cols["x"])) % 3)
    assert cols["depth"].dtype == np.uint8 and cols["x"].dtype == np.float32

    frames = res["frames"]
    np.testing.assert_array_equal(frames["frame"], [0, 1, 2])
    np.testing.assert_array_equal(frames["valid"], [False, True, True])
    np.testing.assert_array_equal(frames["area_A2"], np.float32([10, 11, 12]))
    np.testing.assert_array_equal(frames["drift_x"], np.float32([0, 0.5, 1]))
    assert list(frames)[:9] == ["frame", "valid", "drift_x", "drift_y", "n_ce", "n_o",
                                "o_ce_ratio", "area_A2", "radius_A"]
    assert np.all(np.isnan(frames["radius_A"]))  # not given: filled with NaN

    events = res["events"]
    assert list(events["kind"]) == ["depth_change", "vanished"]
    assert list(events["species"]) == ["Ce", "O"]
    np.testing.assert_array_equal(events["depth_after"], [2, 0])


def test_maps_chunked_per_frame_and_compressed(tmp_path):
    path = tmp_path / "out.h5"
    write_run(path, range(2), 2)
    with h5py.File(path, "r") as f:
        for name in MAP_NAMES:
            ds = f["maps"][name]
            assert ds.shape == (2, H, W)
            assert ds.chunks == (1, H, W)
            assert ds.compression == "gzip"
        assert f["columns/species"].dtype == np.dtype("S2")
        assert f["columns/x"].attrs["units"] == "Å"
        assert f["columns/x"].compression == "gzip"


def test_open_results_is_lazy(tmp_path):
    path = tmp_path / "out.h5"
    write_run(path, range(2), 2)
    with open_results(path) as res:
        assert isinstance(res["maps"]["ce_depth"], h5py.Dataset)
        np.testing.assert_array_equal(res["maps"]["ce_depth"][1], frame_data(1)["ce_depth"])
    assert read_results(path, load_maps=False)["maps"] == {}


def test_interrupted_writer_leaves_no_complete_file(tmp_path):
    path = tmp_path / "out.h5"
    with pytest.raises(KeyboardInterrupt):
        with ResultsWriter(path, shape=(H, W), n_frames=4, attrs=ATTRS) as w:
            w.write_frame(0, **frame_data(0))
            raise KeyboardInterrupt
    assert not path.exists()
    partial = partial_path(path)
    assert partial.name == "out.h5.partial" and partial.is_file()
    with h5py.File(partial, "r") as f:
        assert not f.attrs["complete"]
    with pytest.raises(InputFileError, match="incomplete"):
        read_results(partial)


def test_finalize_refuses_missing_frames(tmp_path):
    path = tmp_path / "out.h5"
    with ResultsWriter(path, shape=(H, W), n_frames=3, attrs=ATTRS) as w:
        w.write_frame(0, **frame_data(0))
        with pytest.raises(ValueError, match="2 of 3 frames not written"):
            w.finalize()
    assert not path.exists()


def test_resume_equals_uninterrupted_run(tmp_path):
    reference = tmp_path / "ref.h5"
    write_run(reference, range(4), 4)

    resumed = tmp_path / "resumed.h5"
    write_run(resumed, range(2), 4, finalize=False)  # "dies" after 2 of 4 frames
    assert not resumed.exists()
    with ResultsWriter(resumed, shape=(H, W), n_frames=4, attrs=ATTRS, resume=True) as w:
        assert w.done_frames == {0, 1}
    write_run(resumed, range(4), 4, resume=True)

    assert_same_results(read_results(reference), read_results(resumed))


def test_resume_drops_rows_of_a_frame_cut_off_mid_write(tmp_path, monkeypatch):
    reference = tmp_path / "ref.h5"
    write_run(reference, range(4), 4)

    path = tmp_path / "out.h5"
    with ResultsWriter(path, shape=(H, W), n_frames=4, attrs=ATTRS) as w:
        w.write_frame(0, **frame_data(0))
        w.write_frame(1, **frame_data(1))
        # a hard kill after the rows of frame 2 are appended but before they are committed
        monkeypatch.setattr(w, "_commit", lambda: (_ for _ in ()).throw(SystemExit))
        monkeypatch.setattr(w, "_rollback", lambda: None)
        with pytest.raises(SystemExit):
            w.write_frame(2, **frame_data(2))
    with h5py.File(partial_path(path), "r") as f:
        assert f["columns/x"].shape[0] > int(f.attrs["partial_committed_rows"][0])

    with ResultsWriter(path, shape=(H, W), n_frames=4, attrs=ATTRS, resume=True) as w:
        assert w.done_frames == {0, 1}
    write_run(path, range(4), 4, resume=True)
    assert_same_results(read_results(reference), read_results(path))


@pytest.mark.parametrize("cut", ["before_delete", "after_delete"])
def test_resume_recovers_a_table_swap_cut_off(tmp_path, cut):
    """A crash while /events is being replaced leaves the old or the new table, whole."""
    path = tmp_path / "out.h5"
    write_run(path, range(2), 2, finalize=False)
    with ResultsWriter(path, shape=(H, W), n_frames=2, attrs=ATTRS, resume=True) as w:
        w.write_events(EVENTS[:1])
    with h5py.File(partial_path(path), "r+") as f:  # replay _replace_table up to the cut
        f.copy("events", "events.new")
        del f["events.new/frame"]
        f["events.new"].create_dataset("frame", data=np.int32([7]), maxshape=(None,))
        if cut == "after_delete":
            del f["events"]
    with ResultsWriter(path, shape=(H, W), n_frames=2, attrs=ATTRS, resume=True) as w:
        w.finalize()
    expected = 1 if cut == "before_delete" else 7
    np.testing.assert_array_equal(read_results(path)["events"]["frame"], [expected])


def test_frames_written_out_of_order_are_sorted(tmp_path):
    reference = tmp_path / "ref.h5"
    write_run(reference, range(3), 3)
    shuffled = tmp_path / "shuffled.h5"
    write_run(shuffled, [2, 0, 1], 3)
    assert_same_results(read_results(reference), read_results(shuffled))


def test_resume_refuses_other_input(tmp_path):
    path = tmp_path / "out.h5"
    write_run(path, range(1), 2, finalize=False)
    other = {**ATTRS, "source_sha256": "c" * 64}
    with pytest.raises(InputFileError, match="source_sha256"):
        ResultsWriter(path, shape=(H, W), n_frames=2, attrs=other, resume=True)
    # the same weights recalibrated: the calibration fingerprint differs
    recalibrated = {**ATTRS, "calibration_sha256": "d" * 64}
    with pytest.raises(InputFileError, match="calibration_sha256"):
        ResultsWriter(path, shape=(H, W), n_frames=2, attrs=recalibrated, resume=True)
    with pytest.raises(InputFileError, match="maps"):
        ResultsWriter(path, shape=(H, W + 1), n_frames=2, attrs=ATTRS, resume=True)


def test_resume_without_partial_or_with_damaged_partial_starts_afresh(tmp_path):
    path = tmp_path / "out.h5"
    with ResultsWriter(path, shape=(H, W), n_frames=2, attrs=ATTRS, resume=True) as w:
        assert w.done_frames == set()
    partial_path(path).write_bytes(b"garbage, not HDF5")
    with ResultsWriter(path, shape=(H, W), n_frames=2, attrs=ATTRS, resume=True) as w:
        assert w.done_frames == set()


def test_write_frame_validation(tmp_path):
    path = tmp_path / "out.h5"
    with ResultsWriter(path, shape=(H, W), n_frames=2, attrs=ATTRS) as w:
        good = frame_data(0)
        with pytest.raises(ValueError, match="shape"):
            w.write_frame(0, **{**good, "ce_depth": np.zeros((H + 1, W))})
        with pytest.raises(ValueError, match="outside"):
            w.write_frame(0, **{**good, "o_depth": np.full((H, W), 300)})
        bad_species = {**good["columns"], "species": np.array(["Ce", "Xx", "O"][: len(good["columns"]["x"])])}
        with pytest.raises(ValueError, match="species"):
            w.write_frame(0, **{**good, "columns": bad_species})
        with pytest.raises(ValueError, match="outside"):
            w.write_frame(5, **good)
        assert w.done_frames == set()
        w.write_frame(0, **good)
        with pytest.raises(ValueError, match="already written"):
            w.write_frame(0, **good)
        with pytest.raises(ValueError, match="track"):
            w.set_tracks([1, 2, 3])


def test_attrs_validation(tmp_path):
    path = tmp_path / "out.h5"
    with pytest.raises(ValueError, match="missing"):
        ResultsWriter(path, shape=(H, W), n_frames=1, attrs={"source": "x"})
    with pytest.raises(ValueError, match="set by the writer"):
        ResultsWriter(path, shape=(H, W), n_frames=1, attrs={**ATTRS, "format": "x"})


def test_read_results_refuses_bad_files(tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["data"] = np.zeros(3)
    with pytest.raises(InputFileError, match="not an atom3d results file"):
        read_results(other)

    text = tmp_path / "notes.h5"
    text.write_text("hello")
    with pytest.raises(InputFileError, match="not an HDF5 file"):
        read_results(text)

    with pytest.raises(InputFileError, match="no such"):
        read_results(tmp_path / "missing.h5")

    future = tmp_path / "future.h5"
    write_run(future, range(1), 1)
    with h5py.File(future, "r+") as f:
        f.attrs["format_version"] = 2
    with pytest.raises(InputFileError, match="format_version 2") as info:
        read_results(future)
    assert "\n" not in str(info.value)


def test_sha256_file(tmp_path):
    path = tmp_path / "blob.bin"
    data = np.random.default_rng(0).bytes(3_000_000)
    path.write_bytes(data)
    assert sha256_file(path, chunk_bytes=1 << 16) == hashlib.sha256(data).hexdigest()


def test_every_table_field_exists_even_without_rows(tmp_path):
    path = tmp_path / "out.h5"
    empty = {"x": [], "y": [], "depth": np.zeros(0, int), "confidence": [],
             "species": np.array([], str)}
    with ResultsWriter(path, shape=(H, W), n_frames=1, attrs=ATTRS) as w:
        w.write_frame(0, **{**frame_data(0), "columns": empty, "frame_row": {}})
        w.finalize()
    res = read_results(path)
    assert list(res["columns"]) == ["frame", "track", "species", "x", "y", "depth", "confidence"]
    assert len(res["columns"]["x"]) == 0
    assert list(res["events"]) == ["frame", "track", "species", "kind", "depth_before",
                                   "depth_after", "confidence"]
    assert res["frames"]["frame"].tolist() == [0] and np.isnan(res["frames"]["drift_x"][0])
    assert res["frames"]["n_ce"].tolist() == [-1]  # not given


def test_row_ranges_after_frames_written_out_of_order(tmp_path):
    """sort_by_frame stores rows in frame order; bounds and row ranges then read one frame."""
    with ResultsWriter(tmp_path / "r.h5", shape=(H, W), n_frames=4, attrs=ATTRS) as w:
        for i in (2, 0, 3, 1):
            w.write_frame(i, **frame_data(i))
        with pytest.raises(ValueError, match="frame order"):
            w.column_frame_bounds()
        w.sort_by_frame()
        bounds = w.column_frame_bounds()
        assert list(np.diff(bounds)) == [2 + i for i in range(4)]
        for t in range(4):
            rows = w.read_column_rows(int(bounds[t]), int(bounds[t + 1]), ("frame", "x", "species"))
            assert set(rows["frame"].tolist()) == {t}
            np.testing.assert_allclose(rows["x"], frame_data(t)["columns"]["x"])
            assert list(rows["species"]) == list(frame_data(t)["columns"]["species"])
        w.write_column_rows(int(bounds[1]), int(bounds[2]), {"track": np.arange(3)})
        with pytest.raises(ValueError, match="cannot be changed"):
            w.write_column_rows(0, 2, {"species": np.array(["O", "O"])})
        assert list(w.read_frames()["frame"]) == [0, 1, 2, 3]
        track = w.read_columns()["track"]
    assert list(track[bounds[1]:bounds[2]]) == [0, 1, 2]
    assert np.all(track[: bounds[1]] == -1)


def test_direct_chunks_are_what_hdf5_filters_write(tmp_path):
    """Maps written as pre-compressed chunks hold HDF5's own shuffle + deflate stream."""
    import zlib

    from atom3d.io.results import deflate_chunk

    rng = np.random.default_rng(0)
    values = {"float16": rng.uniform(0, 1, (1, H, W)).astype(np.float16),
              "uint8": rng.integers(0, 9, (1, H, W)).astype(np.uint8)}
    with h5py.File(tmp_path / "ref.h5", "w") as f:
        for name, v in values.items():
            ds = f.create_dataset(name, data=v, chunks=v.shape, compression="gzip",
                                  compression_opts=1, shuffle=True)
            _, stored = ds.id.read_direct_chunk((0, 0, 0))
            assert zlib.decompress(stored) == zlib.decompress(deflate_chunk(v[0], 1))
            zeros = np.zeros((256, 256), v.dtype)  # level 0: zlib's stored stream (no deflate)
            stored_0 = deflate_chunk(zeros, 0)
            assert zlib.decompress(stored_0) == zeros.tobytes()
            assert len(stored_0) > zeros.nbytes
    path = tmp_path / "out.h5"
    write_run(path, range(3), 3)
    for i in range(3):
        data = frame_data(i)
        with h5py.File(path, "r") as f:
            np.testing.assert_array_equal(f["maps/ce_depth"][i], data["ce_depth"])
            np.testing.assert_array_equal(f["maps/o_confidence"][i],
                                          data["o_confidence"].astype(np.float16))


def test_buffered_commits_resume_from_the_last_commit(tmp_path):
    reference = tmp_path / "ref.h5"
    write_run(reference, range(5), 5)

    path = tmp_path / "out.h5"
    w = ResultsWriter(path, shape=(H, W), n_frames=5, attrs=ATTRS, commit_every=3)
    for i in range(4):
        w.write_frame(i, **frame_data(i))
    assert w.done_frames == {0, 1, 2, 3}
    w._file.close()  # a hard kill: frame 3 was never committed
    w._file = None
    with ResultsWriter(path, shape=(H, W), n_frames=5, attrs=ATTRS, resume=True) as w:
        assert w.done_frames == {0, 1, 2}

    # closing (also on an exception) commits what is pending
    with pytest.raises(RuntimeError, match="stop"), ResultsWriter(
            path, shape=(H, W), n_frames=5, attrs=ATTRS, resume=True, commit_every=10) as w:
        w.write_frame(3, **frame_data(3))
        raise RuntimeError("stop")
    with ResultsWriter(path, shape=(H, W), n_frames=5, attrs=ATTRS, resume=True,
                       commit_every=10) as w:
        assert w.done_frames == {0, 1, 2, 3}
        w.write_frame(4, **frame_data(4))
        assert len(w.read_frames()["frame"]) == 5  # reading commits the pending frame
        post_process(w)
        w.finalize()
    assert_same_results(read_results(reference), read_results(path))


def test_to_float16_gives_numpys_bits():
    """The fast float32 -> float16 cast of the confidence maps is NumPy's cast, bit for bit:
    round to nearest with ties to even, overflow, subnormals, signed zeros, inf and NaN."""
    rng = np.random.default_rng(3)
    halves = rng.integers(0, 1 << 16, 200_000, dtype=np.uint16).view(np.float16)
    exact = halves[np.isfinite(halves)].astype(np.float32)
    with np.errstate(over="ignore"):  # the spacing above 65504 is inf
        ulp = np.spacing(np.abs(exact.astype(np.float16))).astype(np.float32)
    values = np.concatenate([
        rng.random(300_000, dtype=np.float32),  # probabilities, the common case
        exact, exact + ulp / 2, exact - ulp / 2,  # exact halves and the ties between them
        exact + ulp / 3, np.nextafter(exact + ulp / 2, np.float32(np.inf)),
        (rng.standard_normal(100_000) * 1e5).astype(np.float32),  # overflow to inf
        (rng.standard_normal(100_000) * 1e-6).astype(np.float32),  # subnormal halves
        np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 65520.0, 65519.99], np.float32),
    ])
    with np.errstate(over="ignore"):
        fast = to_float16(values)
    assert fast.dtype == np.float16 and fast.shape == values.shape
    with np.errstate(over="ignore"):
        slow = values.astype(np.float16)
    same = fast.view(np.uint16) == slow.view(np.uint16)
    nan = np.isnan(slow)
    assert np.array_equal(np.isnan(fast), nan)
    assert same[~nan].all(), values[~nan][~same[~nan]][:5]
    maps = values[:262_144].reshape(512, 512)[:, ::2]  # a strided view of a map
    assert np.array_equal(to_float16(maps).view(np.uint16), maps.astype(np.float16).view(np.uint16))
    assert to_float16(np.array([0.1, 0.2])).dtype == np.float16  # float64: NumPy's cast


def test_writer_keeps_a_small_chunk_cache(tmp_path):
    """The file being written (new or resumed) has a small HDF5 chunk cache: with h5py's
    1 MiB default, appending rows to the compressed column fields frame after frame grew
    the process's memory without bound (see ``_WRITE_CHUNK_CACHE_BYTES``)."""
    from atom3d.io.results import _WRITE_CHUNK_CACHE_BYTES

    out = tmp_path / "c.h5"
    for resume in (False, True):
        with ResultsWriter(out, shape=(H, W), n_frames=4, attrs=ATTRS, resume=resume) as w:
            if not resume:
                w.write_frame(0, **frame_data(0))
            rdcc_nbytes = w._file.id.get_access_plist().get_cache()[2]
            assert rdcc_nbytes == _WRITE_CHUNK_CACHE_BYTES < 1 << 20
            if resume:
                assert w.done_frames == {0}
