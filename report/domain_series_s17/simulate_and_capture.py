# Session 17 research script (not part of the package): see README.md in this folder.
"""``report/domain_series_s13/domain_series.py`` (same arguments) that also keeps each
series' results file just before post-processing (``pre_post.h5.partial``,
``pre_post.pkl``, as ``report/domain_series_s16/pp_variants.py`` captures it), so the
network runs once per series.

    python simulate_and_capture.py OUT_DIR SEED [SEED ...]
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "domain_series_s13"))
import domain_series as DS
import atom3d.inference.series as S
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "domain_series_s16"))
import pp_variants as PV  # noqa: E402

S.postprocess = PV.keeper(lambda writer: Path(writer.partial_path).parent)
DS.main()
