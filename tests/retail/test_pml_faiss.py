"""pytorch-metric-learning patches FAISS process-wide when imported (`faiss.contrib.torch_utils`): a
search with `params` (our filtered search, milvus-lite's embedded server) then fails. Importing it
through `training.losses.metric_learning` puts FAISS back. Run in a fresh interpreter, since the patch
is process-wide."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_metric_learning_import_leaves_faiss_search_with_params_working() -> None:
    code = textwrap.dedent(
        """
        import faiss, numpy as np
        import pytorch_metric_learning.miners, pytorch_metric_learning.samplers  # patch FAISS (via utils.inference)
        index = faiss.IndexHNSWFlat(8, 16)
        x = np.random.default_rng(0).random((64, 8), dtype=np.float32)
        index.add(x)
        params = faiss.SearchParametersHNSW(efSearch=16)
        try:
            index.search(x[:2], 3, params=params)
            print("patched: search with params worked")
        except TypeError:
            print("patched: search with params failed")
        from visionpipes.retail.training.losses import metric_learning
        metric_learning()
        print("restored:", index.search(x[:2], 3, params=params)[1].shape)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert "patched: search with params failed" in out  # the hazard is real in this FAISS / PML pair
    assert "restored: (2, 3)" in out
