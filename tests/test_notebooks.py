"""The notebooks under notebooks/ run top to bottom and show real results.

Each notebook is executed with nbclient in the ``python3`` kernel of the environment running the tests (the
venv's ipykernel), from the repository root, on the embedded default model and its bundled SAE. Both share one
temporary runs folder, so the second reuses the caches of the first (about half a minute each on a 2-core CPU).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
NAMES = ["01_geometry_explorer.ipynb", "02_filter_and_compare.ipynb"]
# the notebook reads the committed demo report, else the one `make demo` writes
EXPERIMENT_CSVS = [ROOT / "data" / "results" / "experiment" / "demo" / "results.csv", ROOT / "runs" / "demo" / "results.csv"]
STRATEGIES = ["geometry", "random", "projection", "representation", "activation"]


def test_notebooks_are_valid():
    """Cheap check on every run: the files are valid nbformat 4 and name the python3 kernel."""
    import nbformat

    for name in NAMES:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        assert nb.metadata["kernelspec"]["name"] == "python3"
        assert [c for c in nb.cells if c.cell_type == "code"], name


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("notebook-runs")


def _check_kernel() -> None:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        import ipykernel  # noqa: F401
        KernelSpecManager().get_kernel_spec("python3")
    except (ImportError, NoSuchKernel) as e:
        pytest.fail(f"no python3 Jupyter kernel in this environment ({e}); install the dev extras "
                    "(`pip install -e '.[dev]'`, which brings ipykernel)")


def _execute(name: str, runs: Path, monkeypatch) -> tuple[object, Exception | None]:
    """Execute a notebook in place (outputs kept in the returned object); return it and the error, if any."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    _check_kernel()
    monkeypatch.setenv("GEOMFILTER_NB_RUNS", str(runs))  # the kernel inherits the environment
    monkeypatch.delenv("GEOMFILTER_NB_EXPERIMENT", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(ROOT)}})
    try:
        client.execute()
    except CellExecutionError as e:
        return nb, e
    return nb, None


def _outputs(cells) -> list[dict]:
    return [o for c in cells if c.cell_type == "code" for o in c.get("outputs", [])]


def _text(cells) -> str:
    parts = []
    for o in _outputs(cells):
        if o.output_type == "stream":
            parts.append(o.text)
        elif "data" in o:
            parts.append(o.data.get("text/plain", ""))
    return "\n".join(parts)


def _n_png(cells) -> int:
    return sum("image/png" in o.get("data", {}) and len(o.data["image/png"]) > 1000 for o in _outputs(cells))


def _errors(cells) -> list[dict]:
    return [o for o in _outputs(cells) if o.output_type == "error"]


def _has_widgets() -> bool:
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.integration
def test_geometry_explorer_runs_top_to_bottom(runs_dir, monkeypatch):
    nb, err = _execute(NAMES[0], runs_dir, monkeypatch)
    assert err is None, f"{NAMES[0]} failed: {err}"
    assert not _errors(nb.cells)
    text = _text(nb.cells)

    m = re.search(r"held-out AUROC (\d\.\d+) \[(\d\.\d+), (\d\.\d+)\]", text)
    assert m, "no held-out AUROC printed"
    auroc, lo, hi = map(float, m.groups())
    assert lo <= auroc <= hi and auroc > 0.5

    summary = json.loads(text[text.rindex('{\n "rows_per_set"'):text.rindex("}") + 1])
    assert summary["heldout_auroc"] == pytest.approx(auroc, abs=1e-3)
    assert 0 < summary["n_harmful_features"] <= 100
    assert 0 < summary["base_rate"] < 1
    expected = {"proximity_hist.png", "cosine_heatmap.png", "decoder_map.png", "geometry_by_domain.png",
                "precision_inducing.png"}
    assert expected <= set(summary["plots"])
    for p in expected:
        f = runs_dir / "plots" / "01_geometry_explorer" / p
        assert f.stat().st_size > 5000, f
    assert _n_png(nb.cells) >= len(expected)

    # per-sample explanation and top-activating examples, from the default calls (no ipywidgets) or the widgets
    if not _has_widgets():
        assert "(ipywidgets is not installed" in text
        assert re.search(r"rank 1 of \d+", text), "the top-ranked sample's explanation is missing"
        assert "nearest harmful (id: cosine)" in text
        assert len(re.findall(r"top tokens: '", text)) >= 2, "no top-activating examples with their tokens"
    # the explanations table of the filtered slice, with feature -> nearest harmful: cosine entries
    assert re.search(r"\d+→\d+: -?\d\.\d\d", text)
    assert re.search(r"mean max-cosine \d\.\d+ vs \d\.\d+ ± \d\.\d+", text), "permutation control missing"


@pytest.mark.integration
def test_filter_and_compare_runs_top_to_bottom(runs_dir, monkeypatch):
    nb, err = _execute(NAMES[1], runs_dir, monkeypatch)
    code = [c for c in nb.cells if c.cell_type == "code"]
    exp_cells = [i for i, c in enumerate(code) if "results.csv" in c.source]
    assert exp_cells, "the notebook has no experiment-report cell"
    before = code[:exp_cells[0]]

    # everything up to the experiment report runs and shows the comparison
    assert not _errors(before)
    text = _text(before)
    for s in STRATEGIES:
        assert re.search(rf"^{s}\s+\d+\s+\d\.\d+", text, re.M), f"no row for {s} in the comparison table"
    m = re.search(r"base rate of inducing rows (\d\.\d+)", text)
    assert m and 0 < float(m.group(1)) < 1
    assert re.search(r"random baseline over 20 seeds: precision \d\.\d+ ± \d\.\d+", text)
    jac = re.search(r"^geometry\s+(1\.000)\s+(\d\.\d+)", text, re.M)  # the Jaccard table's first row
    assert jac and 0 <= float(jac.group(2)) <= 1
    assert _n_png(before) >= 2  # Jaccard heatmap, precision curves

    csv_path = next((p for p in EXPERIMENT_CSVS if p.is_file()), None)
    if csv_path is not None:
        assert err is None, f"{NAMES[1]} failed with the experiment report present: {err}"
        after = code[exp_cells[0]:]
        assert not _errors(after)
        import csv

        with open(csv_path, encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        shown = _text(after)
        assert f"{csv_path}: {len({r['condition'] for r in rows})} conditions x {len({r['metric'] for r in rows})} " \
               "metrics" in shown
        for r in rows:  # every mean of the CSV is in the pivoted table (rounded to 3 decimals)
            assert re.search(rf"^{re.escape(r['condition'])}\s.*{float(r['mean']):.3f}", shown, re.M), r
        assert _n_png(after) >= 1  # the bar chart
    else:
        # no report yet: the experiment cell (and only it) fails, saying how to make one
        assert err is not None
        errs = _errors(code)
        assert len(errs) == 1 and errs[0] in code[exp_cells[0]].outputs
        assert errs[0].ename == "FileNotFoundError"
        assert "make demo" in errs[0].evalue and "geomfilter experiment" in errs[0].evalue
