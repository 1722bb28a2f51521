"""notebooks/colab_tpu_demo.ipynb runs top to bottom on CPU, offline, with the tiny
built-in model (its parameter cell's "auto" picks the offline defaults outside Colab)."""
import os
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).parents[1] / "notebooks" / "colab_tpu_demo.ipynb"


@pytest.mark.slow
def test_colab_notebook_executes_on_cpu(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "MODEL =" in params[0].source
    # One device is enough for the tiny model; the kernel inherits this environment.
    env_backup = dict(os.environ)
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    os.environ["JAX_PLATFORMS"] = "cpu"
    try:
        client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                         resources={"metadata": {"path": str(tmp_path)}})
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(env_backup)
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                      for o in c.get("outputs", []))
    assert "model=builtin:tiny-random problems=builtin:demo" in outputs
    assert (tmp_path / "outputs" / "colab_demo" / "results.jsonl").exists()
    assert (tmp_path / "outputs" / "colab_demo" / "accuracy_vs_tokens.png").stat().st_size > 0
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert images, "the accuracy-vs-tokens plot was not displayed"
