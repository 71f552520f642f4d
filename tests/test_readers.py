"""Tests of atom3d.io.readers: every input format → frames + pixel size [Å]."""

from __future__ import annotations

import math
import os
import shutil
import signal
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from atom3d.errors import ConfigError, InputFileError, UserError
from atom3d.io import readers
from atom3d.io.readers import Series, open_series, to_angstrom

# --------------------------------------------------------------------------- helpers


def _realdata_dir() -> Path:
    """The shared folder of third-party microscope files (see its MANIFEST.md)."""
    env = os.environ.get("ATOM3D_REALDATA")
    return Path(env) if env else Path(__file__).parents[2] / "shared" / "realdata"


REALDATA = _realdata_dir()
needs_realdata = pytest.mark.skipif(
    not (REALDATA / "MANIFEST.md").is_file(), reason=f"real data not found at {REALDATA}"
)


def _imagej_tiff(path: Path, data: np.ndarray, pixel: float, **metadata) -> Path:
    """Write an ImageJ hyperstack TIFF with ``pixel`` [unit] square pixels.

    ImageJ stores X/YResolution as pixels per unit, i.e. 1 / pixel size.
    """
    import tifffile

    tifffile.imwrite(path, data, imagej=True, resolution=(1 / pixel, 1 / pixel), metadata=metadata)
    return path


def _hspy_signal(data: np.ndarray, scale_nm: float, interval_s: float) -> dict:
    """A minimal RosettaSciIO signal dict for a (frames, H, W) stack."""
    frames, height, width = data.shape
    axes = [
        {"name": "time", "scale": interval_s, "units": "s", "navigate": True, "size": frames},
        {"name": "y", "scale": scale_nm, "units": "nm", "navigate": False, "size": height},
        {"name": "x", "scale": scale_nm, "units": "nm", "navigate": False, "size": width},
    ]
    return {
        "data": data,
        "axes": [{**ax, "offset": 0.0} for ax in axes],
        "metadata": {"General": {"title": "stack"}, "Signal": {"signal_type": ""}},
        "original_metadata": {},
        "attributes": {"_lazy": False},
        "tmp_parameters": {},
        "package_info": {"name": "atom3d-tests", "version": "0"},
        "learning_results": {},
        "models": {},
    }


def _stack(n: int = 4, h: int = 16, w: int = 20, dtype=np.uint16) -> np.ndarray:
    """A stack whose frames differ, so frame order can be checked."""
    return (np.arange(n * h * w) % 1000).reshape(n, h, w).astype(dtype)


def _read_all(path: Path, pixel_size_A: float | None = None) -> Series:
    """Open and touch the first and last frame (what the corruption tests require)."""
    series = open_series(path, pixel_size_A=pixel_size_A)
    series.frame(0)
    series.frame(-1)
    return series


# --------------------------------------------------------------------------- units


@pytest.mark.parametrize(
    ("value", "unit", "expected_A"),
    [
        (1e-10, "m", 1.0),
        (1e-7, "mm", 1.0),
        (1e-4, "µm", 1.0),
        (1e-4, "μm", 1.0),  # Greek mu
        (1e-4, "um", 1.0),
        (1e-4, "micron", 1.0),
        (1e-4, "\\u00B5m", 1.0),  # ImageJ's escaped µm
        (0.1, "nm", 1.0),
        (0.1, "n_m", 1.0),
        (0.1, " NM ", 1.0),
        (1.0, "Å", 1.0),
        (1.0, "\u212b", 1.0),  # ANGSTROM SIGN
        (1.0, "A", 1.0),
        (1.0, "angstrom", 1.0),
        (100.0, "pm", 1.0),
    ],
)
def test_to_angstrom_units(value, unit, expected_A):
    assert to_angstrom(value, unit) == pytest.approx(expected_A)


@pytest.mark.parametrize("unit", [None, "", "1/nm", "px", "furlong", "eV"])
def test_to_angstrom_unknown_unit_raises(unit):
    with pytest.raises(InputFileError, match="unknown length unit"):
        to_angstrom(1.0, unit)


# --------------------------------------------------------------------------- TIFF


@pytest.mark.parametrize(
    ("unit", "pixel_in_unit", "expected_A"),
    [
        ("nm", 0.02, 0.2),
        ("um", 2e-5, 0.2),
        ("micron", 2e-5, 0.2),
        ("\\u00B5m", 2e-5, 0.2),  # ImageJ escapes non-ASCII units
        ("\\u00C5", 0.2, 0.2),
        ("pm", 20.0, 0.2),
    ],
)
def test_imagej_tiff_stack_calibration(tmp_path, unit, pixel_in_unit, expected_A):
    data = _stack(5)
    path = _imagej_tiff(
        tmp_path / "s.tif", data, pixel_in_unit, unit=unit, finterval=0.1, axes="TYX"
    )
    series = open_series(path)
    assert series.format == "tiff-imagej"
    assert series.pixel_size_A == pytest.approx(expected_A, rel=1e-6)
    assert (series.n_frames, len(series), series.shape) == (5, 5, (16, 20))
    assert series.frame_interval_s == pytest.approx(0.1)
    assert series.signal_note == ""
    for i, frame in enumerate(series):
        assert frame.dtype == np.float32
        np.testing.assert_array_equal(frame, data[i])


def test_imagej_time_unit_and_uncalibrated(tmp_path):
    path = _imagej_tiff(tmp_path / "t.tif", _stack(3), 0.05, unit="nm", finterval=250, tunit="ms")
    assert open_series(path).frame_interval_s == pytest.approx(0.25)
    bare = _imagej_tiff(tmp_path / "bare.tif", _stack(3), 1.0)  # no unit: uncalibrated
    with pytest.raises(InputFileError, match="no pixel calibration; pass --pixel-size in Å"):
        open_series(bare)
    series = open_series(bare, pixel_size_A=0.3)
    assert (series.pixel_size_A, series.n_frames) == (0.3, 3)
    assert math.isnan(series.frame_interval_s)


def test_imagej_non_square_refused(tmp_path):
    import tifffile

    path = tmp_path / "ns.tif"
    tifffile.imwrite(
        path, _stack(2), imagej=True, resolution=(1 / 0.02, 1 / 0.03), metadata={"unit": "nm"}
    )
    with pytest.raises(InputFileError, match=r"non-square pixels \(0\.3 Å along y, 0\.2 Å"):
        open_series(path)
    assert open_series(path, pixel_size_A=0.25).pixel_size_A == 0.25


def test_plain_tiff_needs_pixel_size(tmp_path):
    import tifffile

    data = _stack(3, dtype=np.float32)
    path = tmp_path / "plain.tiff"
    tifffile.imwrite(path, data, photometric="minisblack")
    with pytest.raises(InputFileError, match="no pixel calibration"):
        open_series(path)
    series = open_series(path, pixel_size_A=0.1)
    assert (series.format, series.n_frames) == ("tiff", 3)
    np.testing.assert_array_equal(series.frame(2), data[2])


def test_rgb_tiff_refused(tmp_path):
    import tifffile

    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, np.zeros((16, 16, 3), np.uint8), photometric="rgb")
    with pytest.raises(InputFileError, match="colour"):
        open_series(path, pixel_size_A=0.1)


# --------------------------------------------------------------------------- NumPy


def test_npy_needs_pixel_size(tmp_path):
    data = _stack(3, dtype=np.int16)
    np.save(tmp_path / "a.npy", data)
    with pytest.raises(InputFileError, match="no pixel calibration; pass --pixel-size in Å"):
        open_series(tmp_path / "a.npy")
    series = open_series(tmp_path / "a.npy", pixel_size_A=0.05)
    assert (series.format, series.n_frames, series.shape, series.pixel_size_A) == (
        "npy",
        3,
        (16, 20),
        0.05,
    )
    np.testing.assert_array_equal(series.frame(1), data[1].astype(np.float32))


def test_npy_single_image_and_singleton_axes(tmp_path):
    np.save(tmp_path / "img.npy", np.ones((8, 9)))
    np.save(tmp_path / "one.npy", np.ones((1, 1, 8, 9)))
    np.save(tmp_path / "tall.npy", np.ones((1, 5, 1, 8, 9)))
    for name, frames in (("img", 1), ("one", 1), ("tall", 5)):
        series = open_series(tmp_path / f"{name}.npy", pixel_size_A=0.1)
        assert (series.n_frames, series.shape) == (frames, (8, 9))
        assert series.frame(-1).shape == (8, 9)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((100,), "1-D data"),
        ((1, 100), "1-D data"),
        ((2, 3, 8, 8), "4-D data"),
        ((0, 8, 8), "empty array"),
    ],
)
def test_npy_bad_dimensions(tmp_path, shape, message):
    np.save(tmp_path / "bad.npy", np.zeros(shape, np.float32))
    with pytest.raises(InputFileError, match=message):
        open_series(tmp_path / "bad.npy", pixel_size_A=0.1)


def test_complex_data_refused(tmp_path):
    np.save(tmp_path / "c.npy", np.zeros((8, 8), np.complex64))
    with pytest.raises(InputFileError, match="complex"):
        open_series(tmp_path / "c.npy", pixel_size_A=0.1)


def test_npy_is_read_lazily(tmp_path):
    """A 200 MB memmapped stack: opening and reading one frame allocates ~one frame."""
    path = tmp_path / "big.npy"
    n, h, w = 800, 256, 256
    big = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, h, w))
    big[-1] = 7.0  # the rest stays a sparse hole on disk
    del big
    tracemalloc.start()
    try:
        start = time.perf_counter()
        series = open_series(path, pixel_size_A=0.1)
        last = series.frame(n - 1)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert series.n_frames == n and last.shape == (h, w) and float(last[0, 0]) == 7.0
    assert peak < 4 * h * w * 4  # a few frames' worth, not 200 MB
    assert elapsed < 2.0


def test_tiff_frame_is_read_lazily(tmp_path):
    data = _stack(200, 128, 128)
    path = _imagej_tiff(tmp_path / "long.tif", data, 0.02, unit="nm", axes="TYX")
    series = open_series(path)
    series.frame(0)  # warm up imports and caches
    tracemalloc.start()
    try:
        frame = series.frame(150)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(frame, data[150])
    assert peak < 20 * data[0].nbytes  # whole stack would be 200 frames


# --------------------------------------------------------------------------- MRC, zarr, HDF5


def test_mrc_stack_voxel_size(tmp_path):
    import mrcfile

    data = _stack(3, dtype=np.float32)
    with mrcfile.new(tmp_path / "s.mrc") as mrc:
        mrc.set_data(data)
        mrc.voxel_size = 0.5  # Å
        mrc.set_image_stack()
    series = open_series(tmp_path / "s.mrc")
    assert (series.format, series.n_frames, series.shape) == ("mrc", 3, (16, 20))
    assert series.pixel_size_A == pytest.approx(0.5)
    np.testing.assert_array_equal(series.frame(2), data[2])
    series.close()


def test_mrc_coarse_and_uncalibrated(tmp_path):
    import mrcfile

    with mrcfile.new(tmp_path / "coarse.mrc") as mrc:
        mrc.set_data(np.zeros((16, 16), np.float32))
        mrc.voxel_size = 2.0
    with pytest.raises(InputFileError, match=r"pixel size 2 Å is too coarse"):
        open_series(tmp_path / "coarse.mrc")
    with mrcfile.new(tmp_path / "bare.mrc") as mrc:
        mrc.set_data(np.zeros((16, 16), np.int16))
        mrc.voxel_size = 0.0
    with pytest.raises(InputFileError, match="no pixel calibration"):
        open_series(tmp_path / "bare.mrc")


def test_zarr_array_and_group(tmp_path):
    import zarr

    data = _stack(4, dtype=np.float32)
    arr = zarr.create_array(tmp_path / "a.zarr", shape=data.shape, dtype="f4", chunks=(1, 16, 20))
    arr[:] = data
    arr.attrs["pixel_size_A"] = 0.12
    series = open_series(tmp_path / "a.zarr")
    assert (series.format, series.n_frames, series.pixel_size_A) == ("zarr", 4, 0.12)
    np.testing.assert_array_equal(series.frame(3), data[3])

    group = zarr.open_group(tmp_path / "g.zarr", mode="w")
    group.attrs.update(pixel_size_A=0.08, frame_interval_s=0.5)
    group.create_array("movie/frames", shape=data.shape, dtype="u2")[:] = data
    group.create_array("profile", shape=(20,), dtype="f4")
    series = open_series(tmp_path / "g.zarr")
    assert (series.pixel_size_A, series.frame_interval_s) == (0.08, 0.5)
    assert "movie/frames" in series.signal_note

    bare = zarr.create_array(tmp_path / "bare.zarr", shape=(8, 8), dtype="f4")
    bare[:] = 1
    with pytest.raises(InputFileError, match="no pixel calibration"):
        open_series(tmp_path / "bare.zarr")
    assert open_series(tmp_path / "bare.zarr", pixel_size_A=0.2).n_frames == 1


def test_zarr_group_without_image(tmp_path):
    import zarr

    group = zarr.open_group(tmp_path / "p.zarr", mode="w")
    group.create_array("a", shape=(20,), dtype="f4")
    group.create_array("b", shape=(30,), dtype="f4")
    with pytest.raises(InputFileError, match="none of its 2 arrays"):
        open_series(tmp_path / "p.zarr", pixel_size_A=0.1)


def test_hspy_stack(tmp_path):
    from rsciio import hspy

    data = _stack(3, dtype=np.float32)
    hspy.file_writer(str(tmp_path / "s.hspy"), _hspy_signal(data, 0.05, 0.5))
    shutil.copy(tmp_path / "s.hspy", tmp_path / "s.h5")
    for name in ("s.hspy", "s.h5"):
        series = open_series(tmp_path / name)
        assert series.format == "hspy"
        assert (series.n_frames, series.shape) == (3, (16, 20))
        assert series.pixel_size_A == pytest.approx(0.5)
        assert series.frame_interval_s == pytest.approx(0.5)
        np.testing.assert_array_equal(series.frame(1), data[1])


def test_berkeley_emd_stack(tmp_path):
    from rsciio import emd

    data = _stack(3, dtype=np.float32)
    signal = _hspy_signal(data, 0.02, 2.0)
    emd.file_writer(str(tmp_path / "b.emd"), signal)
    series = open_series(tmp_path / "b.emd")
    assert (series.format, series.n_frames) == ("emd-berkeley", 3)
    assert series.pixel_size_A == pytest.approx(0.2)
    assert series.frame_interval_s == pytest.approx(2.0)
    np.testing.assert_array_equal(series.frame(2), data[2])


def test_prismatic_emd_image(tmp_path):
    """Prismatic's EMD (a simulated HRTEM or STEM image; '[n_m]' units) is read."""
    import h5py

    data = _stack(1, 24, 32, dtype=np.float32)[0]
    with h5py.File(tmp_path / "p.emd", "w") as f:
        sim = f.create_group("4DSTEM_simulation")
        sim.attrs.update({"emd_group_type": 2, "version_major": 0, "version_minor": 5})
        for name in ("datacubes", "diffractionslices", "pointlistarrays", "pointlists"):
            sim.create_group(f"data/{name}")
        g = sim.create_group("data/realslices/HRTEM")
        g.attrs.update({"depth": 1, "emd_group_type": 1, "metadata": 0})
        g.create_dataset("realslice", data=data.T)  # Prismatic stores (x, y)
        for k, n in ((1, 32), (2, 24)):
            d = g.create_dataset(f"dim{k}", data=0.02 * np.arange(n))
            d.attrs.update({"name": np.bytes_("R_x" if k == 1 else "R_y"),
                            "units": np.bytes_("[n_m]")})
        sim.create_group("metadata/metadata_0/original/simulation_parameters")
    series = open_series(tmp_path / "p.emd")
    assert series.format == "emd-prismatic"
    assert series.pixel_size_A == pytest.approx(0.2)
    assert series.shape == (24, 32)
    np.testing.assert_array_equal(series.frame(0), data)


def _set_emd_units(path: Path, units: str) -> None:
    """Overwrite the units of every dimension vector of a Berkeley EMD file."""
    import h5py

    with h5py.File(path, "r+") as f:
        dims = []
        f.visititems(lambda name, obj: dims.append(obj) if name.split("/")[-1].startswith("dim")
                     and isinstance(obj, h5py.Dataset) else None)
        assert dims
        for dim in dims:
            dim.attrs["units"] = units


@pytest.mark.parametrize(("units", "expected"), [("[n_m]", 0.2), ("[]", None)])
def test_berkeley_emd_bracketed_units(tmp_path, units, expected):
    """Berkeley EMD files write units in brackets: "[n_m]" is nm and "[]" (the
    hyperspy test files, scale 1) is no calibration at all."""
    from rsciio import emd

    emd.file_writer(str(tmp_path / "b.emd"), _hspy_signal(_stack(2, dtype=np.float32), 0.02, 1.0))
    _set_emd_units(tmp_path / "b.emd", units)
    if expected is None:
        with pytest.raises(InputFileError, match="has no pixel calibration; pass --pixel-size"):
            open_series(tmp_path / "b.emd")
        assert open_series(tmp_path / "b.emd", pixel_size_A=0.2).pixel_size_A == 0.2
    else:
        assert open_series(tmp_path / "b.emd").pixel_size_A == pytest.approx(expected)


@pytest.mark.parametrize(("unit", "guess"), [("1/nm", "a diffraction pattern or FFT?"),
                                             ("1 / nm", "a diffraction pattern or FFT?"),
                                             ("nm^-1", "a diffraction pattern or FFT?"),
                                             ("ps", "not an image in real space?"),
                                             ("eV", "not an image in real space?")])
def test_non_length_calibration_says_what_it_may_be(tmp_path, unit, guess):
    from rsciio import hspy

    signal = _hspy_signal(_stack(2, dtype=np.float32), 0.02, 1.0)
    signal["axes"][2]["units"] = unit
    hspy.file_writer(str(tmp_path / "s.hspy"), signal)
    with pytest.raises(InputFileError) as info:
        open_series(tmp_path / "s.hspy")
    assert str(info.value).endswith(f"pixel calibration unit {unit!r} is not a length "
                                    f"({guess}); pass --pixel-size in Å")


def test_velox_file_needing_a_missing_package_is_one_clear_line(tmp_path, monkeypatch):
    """RosettaSciIO asks for `sparse` before it reads even the images of a Velox file
    that holds an EDS spectrum image; without it the user gets what to install."""
    from rsciio import emd

    path = tmp_path / "v.emd"
    _velox_like(path)

    def needs_sparse(*args, **kwargs):
        raise ModuleNotFoundError("The 'sparse' library was not found.", name="sparse")

    monkeypatch.setattr(emd, "file_reader", needs_sparse)
    with pytest.raises(InputFileError, match=r"EDS spectrum image; .*'sparse' package .*"
                                             r"\(pip install sparse\)$"):
        open_series(path)
    monkeypatch.setattr(emd, "file_reader", lambda *a, **k: [])
    with pytest.raises(InputFileError, match="holds no image or image stack"):
        open_series(path)


def test_sparse_is_installed_for_velox_eds_files():
    """The dependency that lets RosettaSciIO open Velox EDS files is installed."""
    import importlib.util

    assert importlib.util.find_spec("sparse") is not None


def _velox_like(path: Path) -> None:
    """An HDF5 file that the reader's sniffing takes for Velox EMD."""
    import h5py

    with h5py.File(path, "w") as f:
        f.create_group("Version").create_dataset("Version", data=np.array([b'{"format": "Velox"}']))
        f.create_group("Data").create_group("Image")


def test_plain_hdf5_dataset(tmp_path):
    import h5py

    data = _stack(2)
    with h5py.File(tmp_path / "p.h5", "w") as f:
        f.create_dataset("images", data=data, chunks=(1, 16, 20))
        f["images"].attrs["pixel_size_A"] = 0.09
    with open_series(tmp_path / "p.h5") as series:
        assert (series.format, series.n_frames, series.pixel_size_A) == ("hdf5", 2, 0.09)
        np.testing.assert_array_equal(series.frame(1), data[1])


def test_several_signals_take_largest_image():
    """What RosettaSciIO returns for a file with a profile, a preview and the movie."""
    signals = [
        {"data": np.zeros((100,)), "axes": [{"size": 100, "navigate": False}]},
        {
            "data": np.zeros((8, 8)),
            "axes": [{"size": 8, "navigate": False, "scale": 0.1, "units": "nm"}] * 2,
        },
        {
            "data": np.zeros((5, 32, 32)),
            "axes": [{"size": 5, "navigate": True, "scale": 2, "units": "s"}]
            + [{"size": 32, "navigate": False, "scale": 0.05, "units": "nm"}] * 2,
            "metadata": {"General": {"title": "HRTEM"}},
        },
    ]
    raw = readers._from_rsciio(Path("x.dm4"), signals, "dm4")
    assert raw.array.shape == (5, 32, 32)
    assert raw.frame_interval_s == 2.0
    assert "signal 3 of 3" in raw.signal_note and "HRTEM" in raw.signal_note
    with pytest.raises(InputFileError, match="1-D data"):
        readers._from_rsciio(Path("x.dm4"), signals[:1], "dm4")


# --------------------------------------------------------------------------- bad paths and options


def test_missing_directory_empty_and_unknown(tmp_path):
    with pytest.raises(InputFileError, match="does not exist"):
        open_series(tmp_path / "nope.dm4")
    with pytest.raises(InputFileError, match="is a directory"):
        open_series(tmp_path)
    (tmp_path / "empty.dm3").write_bytes(b"")
    with pytest.raises(InputFileError, match="is empty"):
        open_series(tmp_path / "empty.dm3")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputFileError, match="unknown file extension '.txt'"):
        open_series(tmp_path / "notes.txt")


def test_png_renamed_dm3(tmp_path):
    path = tmp_path / "image.dm3"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    with pytest.raises(InputFileError, match="looks like a PNG image file, not DM3"):
        open_series(path)


def test_unreadable_file(tmp_path):
    path = tmp_path / "secret.npy"
    np.save(path, np.zeros((8, 8)))
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as root: file permissions are not enforced")
        with pytest.raises(InputFileError, match="permission denied"):
            open_series(path, pixel_size_A=0.1)
    finally:
        path.chmod(0o600)


@pytest.mark.parametrize("bad", [0, -0.1, float("nan"), float("inf"), "abc"])
def test_bad_pixel_size_option(tmp_path, bad):
    np.save(tmp_path / "a.npy", np.zeros((8, 8)))
    with pytest.raises(ConfigError, match="--pixel-size must be a positive number"):
        open_series(tmp_path / "a.npy", pixel_size_A=bad)


def test_coarse_pixel_size_option(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((8, 8)))
    with pytest.raises(ConfigError, match="too coarse"):
        open_series(tmp_path / "a.npy", pixel_size_A=1.5)
    assert open_series(tmp_path / "a.npy", pixel_size_A=1.0).pixel_size_A == 1.0


def test_frame_index_out_of_range(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((2, 8, 8)))
    series = open_series(tmp_path / "a.npy", pixel_size_A=0.1)
    with pytest.raises(IndexError):
        series.frame(2)


# --------------------------------------------------------------------------- real files

# path under REALDATA → (pixel size [Å] or error pattern, n_frames, (H, W), interval [s])
REAL_FILES = {
    "openNCEM/ncempy/data/16_STOimage.emi": (0.10013, 1, (1024, 1024), None),
    "openNCEM/ncempy/data/16_STOimage_1.ser": (0.10013, 1, (1024, 1024), None),
    "openNCEM/ncempy/data/dmTest_3D_int16_64,65,66.dm4": (
        r"non-square pixels \(30 Å along y, 0\.02 Å along x\)",
        66,
        (65, 64),
        None,
    ),
    "openNCEM/ncempy/data/dmTest_float32_nonSquare_diffPixelSize.dm3": (
        r"non-square pixels \(2 Å along y, 10 Å along x\)",
        1,
        (64, 128),
        None,
    ),
    "openNCEM/ncempy/data/temp.mrc": (r"pixel size 2 Å is too coarse", 3, (128, 128), None),
    "rosettasciio/rsciio/tests/data/digitalmicrograph/2D/test_STEM_image.dm3": (
        r"pixel size 2\.4854 Å is too coarse",
        1,
        (68, 68),
        None,
    ),
    "rosettasciio/rsciio/tests/data/digitalmicrograph/test_stackbuilder_imagestack.dm3": (
        r"pixel size 599\.83 Å is too coarse",
        3,
        (2, 16),
        None,
    ),
    "rosettasciio/rsciio/tests/data/emd/fei_example_tem_stack.emd": (0.081729, 2, (3, 3), 0.8),
    "rosettasciio/rsciio/tests/data/mrc/HAADFscan.mrc": (
        r"pixel size 56\.791 Å is too coarse",
        1,
        (16, 16),
        None,
    ),
    "rosettasciio/rsciio/tests/data/tia/new/128x128_TEM_acquire-sum1.emi": (
        r"pixel size 214\.79 Å is too coarse",
        1,
        (128, 128),
        None,
    ),
    "rosettasciio/rsciio/tests/data/tia/new/128x128_TEM_acquire-sum1_1.ser": (
        r"pixel size 214\.79 Å is too coarse",
        1,
        (128, 128),
        None,
    ),
    "rosettasciio/rsciio/tests/data/tia/old/64x64_TEM_images_acquire.emi": (
        r"pixel size 62\.818 Å is too coarse",
        1,
        (64, 64),
        None,
    ),
    "rosettasciio/rsciio/tests/data/tia/old/64x64_TEM_images_acquire_1.ser": (
        r"pixel size 62\.818 Å is too coarse",
        1,
        (64, 64),
        None,
    ),
    "rosettasciio/rsciio/tests/data/tiff/test_dm_image_um_unit.dm3": (
        r"pixel size 1686\.7 Å is too coarse",
        1,
        (68, 68),
        None,
    ),
    "rosettasciio/rsciio/tests/data/tiff/test_loading_image_saved_with_DM.tif": (
        r"pixel size 1686\.7 Å is too coarse",
        1,
        (68, 68),
        None,
    ),
    "TEMUL/temul/example_data/experimental/example_Se_implanted_MoS2.dm3": (
        0.12695,
        1,
        (1024, 1024),
        None,
    ),
}


@pytest.mark.realdata
@needs_realdata
@pytest.mark.parametrize("relpath", sorted(REAL_FILES))
def test_real_file(relpath):
    expected, n_frames, shape, interval = REAL_FILES[relpath]
    path = REALDATA / relpath
    if isinstance(expected, str):
        with pytest.raises(InputFileError, match=expected) as info:
            open_series(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
        series = open_series(path, pixel_size_A=0.1)  # the override makes it readable
    else:
        series = open_series(path)
        assert series.pixel_size_A == pytest.approx(expected, rel=1e-4)
    assert (series.n_frames, series.shape) == (n_frames, shape)
    if interval is None:
        assert math.isnan(series.frame_interval_s)
    else:
        assert series.frame_interval_s == pytest.approx(interval)
    last = series.frame(-1)
    assert last.dtype == np.float32 and last.shape == shape and np.isfinite(last).all()


@pytest.mark.realdata
@needs_realdata
def test_real_manifest_is_covered():
    listed = {p.relative_to(REALDATA).as_posix() for p in REALDATA.rglob("*") if p.is_file()}
    assert listed - {"MANIFEST.md"} == set(REAL_FILES)


@pytest.mark.realdata
@needs_realdata
def test_real_formats():
    stack = open_series(REALDATA / "rosettasciio/rsciio/tests/data/emd/fei_example_tem_stack.emd")
    assert stack.format == "emd-velox"
    frames = list(stack)
    assert len(frames) == 2 and not np.array_equal(frames[0], frames[1])
    tif = REALDATA / "rosettasciio/rsciio/tests/data/tiff/test_loading_image_saved_with_DM.tif"
    dm3 = REALDATA / "rosettasciio/rsciio/tests/data/tiff/test_dm_image_um_unit.dm3"
    from_tif, from_dm3 = open_series(tif, 0.5), open_series(dm3, 0.5)
    assert from_tif.format == "tiff-dm"
    np.testing.assert_array_equal(from_tif.frame(0), from_dm3.frame(0))


@pytest.mark.realdata
@needs_realdata
def test_real_emi_without_its_ser(tmp_path):
    shutil.copy(REALDATA / "openNCEM/ncempy/data/16_STOimage.emi", tmp_path)
    with pytest.raises(InputFileError, match="data file 16_STOimage_1.ser is missing"):
        open_series(tmp_path / "16_STOimage.emi")


# --------------------------------------------------------------------------- corruption


def _synthetic_files(folder: Path) -> list[Path]:
    """One small file per writer-backed format."""
    import h5py
    import mrcfile
    from rsciio import emd, hspy

    data = _stack(3, 16, 16, np.float32)
    np.save(folder / "s.npy", data)
    _imagej_tiff(folder / "s.tif", data, 0.02, unit="nm", finterval=0.1, axes="TYX")
    with mrcfile.new(folder / "s.mrc") as mrc:
        mrc.set_data(data)
        mrc.voxel_size = 0.5
    hspy.file_writer(str(folder / "s.hspy"), _hspy_signal(data, 0.05, 0.5))
    emd.file_writer(str(folder / "s.emd"), _hspy_signal(data, 0.05, 0.5))
    with h5py.File(folder / "s.h5", "w") as f:
        f.create_dataset("images", data=data).attrs["pixel_size_A"] = 0.1
    return sorted(folder.iterdir())


def _corrupted_copies(path: Path, out: Path, seed: int) -> list[Path]:
    """5 copies with random bytes flipped and 3 truncated copies of ``path``."""
    raw = path.read_bytes()
    rng = np.random.default_rng(seed)
    copies = []
    for k in range(8):
        blob = bytearray(raw)
        if k < 5:
            for pos in rng.integers(0, len(blob), size=int(rng.integers(1, 16))):
                blob[pos] ^= int(rng.integers(1, 256))
        else:
            blob = blob[: int(len(blob) * (0.05, 0.5, 0.95)[k - 5])]
        folder = out / f"copy{k}"
        folder.mkdir(parents=True)
        for companion in path.parent.glob(f"{path.stem}_*.ser"):  # TIA .emi data files
            shutil.copy(companion, folder / companion.name)
        (folder / path.name).write_bytes(bytes(blob))
        copies.append(folder / path.name)
    return copies


def _assert_reads_or_input_error(path: Path) -> None:
    """Read with the override (parses furthest), then with the file's calibration."""
    try:
        _read_all(path, 0.1)
        _read_all(path)
    except InputFileError as exc:
        assert "\n" not in str(exc)
    # any other exception fails the test


@pytest.fixture
def short_parse_timeout(monkeypatch):
    """A corrupt HDF5 file that makes libhdf5 loop forever costs 3 s, not 30 s."""
    monkeypatch.setattr(readers, "ISOLATED_PARSE_TIMEOUT_S", 3.0)


@pytest.mark.usefixtures("short_parse_timeout")
def test_corrupted_synthetic_files(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for k, path in enumerate(_synthetic_files(source)):
        _read_all(path, 0.1)  # the intact file reads
        for copy in _corrupted_copies(path, tmp_path / path.name, seed=k):
            _assert_reads_or_input_error(copy)


@pytest.mark.realdata
@needs_realdata
@pytest.mark.parametrize("relpath", sorted(REAL_FILES))
@pytest.mark.usefixtures("short_parse_timeout")
def test_corrupted_real_files(tmp_path, relpath):
    for copy in _corrupted_copies(REALDATA / relpath, tmp_path, seed=len(relpath)):
        _assert_reads_or_input_error(copy)


def test_user_error_is_one_line(tmp_path):
    (tmp_path / "bad.emd").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    with pytest.raises(UserError) as info:
        open_series(tmp_path / "bad.emd")
    assert "bad.emd" in str(info.value) and "\n" not in str(info.value)


def _hang(path: Path):
    time.sleep(60)


def _crash(path: Path):
    os.kill(os.getpid(), signal.SIGKILL)


def _fail(path: Path):
    raise OSError("bad heap")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the isolation guard needs os.fork")
def test_isolated_parse_turns_hang_and_crash_into_input_error(tmp_path, monkeypatch):
    """libhdf5 can loop forever or crash on a corrupt file: the forked trial parse catches it."""
    path = tmp_path / "x.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n")
    monkeypatch.setattr(readers, "ISOLATED_PARSE_TIMEOUT_S", 0.5)
    start = time.perf_counter()
    with pytest.raises(InputFileError, match=r"did not finish within 0\.5 s"):
        readers._parse_in_child(readers._Format(_hang, "HDF5", "HDF5", True), path)
    assert time.perf_counter() - start < 5
    # the cases below end at once; a generous limit keeps a loaded host from timing out
    monkeypatch.setattr(readers, "ISOLATED_PARSE_TIMEOUT_S", 60.0)
    with pytest.raises(InputFileError, match="parser crashed"):
        readers._parse_in_child(readers._Format(_crash, "HDF5", "HDF5", True), path)
    # an ordinary error is left to the in-process read, which reports it
    readers._parse_in_child(readers._Format(_fail, "HDF5", "HDF5", True), path)
