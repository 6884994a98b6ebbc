"""`--executor ray` on a real 2-CPU local Ray cluster (slow)."""

from __future__ import annotations

import polars as pl
import pytest
from adnanny_serve.label import LabelConfig, label_file

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::ResourceWarning")


@pytest.mark.slow
def test_ray_executor_labels_every_row_once_and_resumes(tiny_fp8, query_ad_rows, tmp_path) -> None:
    inp = tmp_path / "in.parquet"
    query_ad_rows.head(10).select("id", "query", "ad_title", "ad_description", "ad_url").write_parquet(inp)
    out = tmp_path / "ray.parquet"
    cfg = dict(model=str(tiny_fp8), task="query_ad", input=str(inp), out=str(out), chunk_size=3, max_tokens=6,
               progress=False, num_workers=2)
    # a previous (killed) local run finished chunk 0; Ray must do chunks 1..3 only
    local_out = tmp_path / "local.parquet"
    label_file(LabelConfig(**{**cfg, "out": str(local_out)}))
    parts = out.with_name(out.name + ".parts")
    from adnanny_serve.label import plan

    plan(LabelConfig(**cfg, executor="ray"))  # writes state.json like a started run
    pl.read_parquet(local_out).head(3).write_parquet(parts / "chunk-000000.parquet")
    stats = label_file(LabelConfig(**cfg, executor="ray"))
    assert stats.chunks_skipped == 1 and stats.rows_done_now == 7 and stats.rows == 10
    df = pl.read_parquet(out)
    assert df["id"].to_list() == pl.read_parquet(inp)["id"].to_list()
    # greedy decoding: the Ray workers produce exactly what the local run produced
    assert df.drop("label_probs").equals(pl.read_parquet(local_out).drop("label_probs"))

