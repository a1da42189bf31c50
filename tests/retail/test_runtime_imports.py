"""The runtime never loads the training stack: a fresh process that builds the server app for a
deploy folder and runs a query from the command line has not imported Lightning, Optuna, DVCLive,
pytorch-metric-learning or `visionpipes.retail.training`."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

TRAINING_STACK = ("lightning", "pytorch_lightning", "optuna", "dvclive", "pytorch_metric_learning")

SCRIPT = textwrap.dedent(
    """
    import contextlib, io, json, sys
    from visionpipes.retail.serve.app import app_for_index
    from visionpipes.retail.cli import main

    app_for_index(sys.argv[1]).state.index.close()  # the server app, built then closed (one process per index)
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):
        main(["query", sys.argv[2], "--index", sys.argv[1], "--k", "3"])  # run_main exits
    assert json.loads(out.getvalue())["results"], out.getvalue()
    loaded = sorted(
        name for name in sys.modules
        if name.split(".")[0] in {stack} or name.startswith("visionpipes.retail.training")
    )
    print(json.dumps(loaded))
    """
).replace("{stack}", repr(set(TRAINING_STACK)))


def test_server_and_query_load_without_the_training_stack(deployed):
    photo = next((deployed / "catalog" / "queries").iterdir())
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(deployed / "deploy"), str(photo)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
