"""`executor = "ray"` on a real 2-CPU local Ray cluster (recent Ray has no local mode). Slow: `-m slow`."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from stub_teacher import StubTeacher  # noqa: E402

from adnanny_cook.config import load_config  # noqa: E402
from adnanny_cook.corpus import read_corpus  # noqa: E402
from adnanny_cook.pipeline import run_cook  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::ResourceWarning"),
              pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")]


def test_ray_executor_matches_local_labels_and_filters(tmp_path: Path, sample_dir: Path) -> None:
    pytest.importorskip("ray")
    with StubTeacher(k=3, bad_rate=0.5, p429=0.05, p500=0.05) as s:
        common = {"task": "query_ad", "input": str(sample_dir / "query_ad.parquet"), "base_url": s.base_url,
                  "model": "teacher", "limit": 60, "k": 3, "chunk_size": 15, "embed_model": "hashing",
                  "progress": False, "backoff_base_s": 0.01}
        ray_m = run_cook(load_config(None, {**common, "out": str(tmp_path / "ray"), "executor": "ray",
                                            "ray_num_cpus": 2}))
        assert s.repeated_successes() == 0
        local_m = run_cook(load_config(None, {**common, "out": str(tmp_path / "local")}))
    # same filters, same counts (every call of the local run came from its own fresh cache... or the server)
    drops = {k: v for k, v in ray_m["filters"]["dropped"].items()}
    assert drops == local_m["filters"]["dropped"]
    assert ray_m["stats"]["teacher"]["ok"] == 180 and ray_m["rows"] == local_m["rows"] == 120
    served = Counter(v for v in s.served.values())
    assert drops["schema"] == served["malformed"] > 0 and drops["self_consistency"] == served["divergent"]
    a, b = read_corpus(tmp_path / "ray"), read_corpus(tmp_path / "local")
    import polars as pl

    def norm(df: pl.DataFrame) -> pl.DataFrame:  # the chosen candidate index may differ (MMR memory per actor)
        return df.select(pl.col("id").str.replace(r"-\d+-r$", "-r"), "labels", "split", "mode").sort("id")

    assert norm(a).equals(norm(b))
    assert len(list((tmp_path / "ray/.work/chunks").glob("*.json"))) == 4
    assert json.loads((tmp_path / "ray/manifest.json").read_text())["config"]["executor"] == "ray"
