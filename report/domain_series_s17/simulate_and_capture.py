# Session 17 research script (not part of the package): see README.md in this folder.
"""``report/domain_series_s13/domain_series.py`` (same arguments) that also keeps each
series' results file just before post-processing (``pre_post.h5.partial``,
``pre_post.pkl``, as ``report/domain_series_s16/pp_variants.py`` captures it), so the
network runs once per series.

    python simulate_and_capture.py OUT_DIR SEED [SEED ...]
"""
import pickle
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "domain_series_s13"))
import domain_series as DS
import atom3d.inference.series as S
ORIG = S.postprocess
def keep(writer, *args, **kwargs):
    d = Path(writer.partial_path).parent
    writer._commit_pending(); writer._file.flush()
    shutil.copy(writer.partial_path, d / "pre_post.h5.partial")
    info = {"shape": writer.shape, "n_frames": writer.n_frames, "attrs": writer._attrs,
            "args": args[:3], "kwargs": {"track_detection": kwargs["track_detection"]}}
    (d / "pre_post.pkl").write_bytes(pickle.dumps(info))
    return ORIG(writer, *args, **kwargs)
S.postprocess = keep
DS.main()
