"""The runner on tiny throwaway notebooks: reports, metrics, failures, refused parameters."""

import json
import subprocess
import sys

import nbformat
import pytest

from kdlib.lab import runner
from kdlib.lab.paths import REPO_ROOT


def make_notebook(path, params_src, body_src):
    nb = nbformat.v4.new_notebook()
    par = nbformat.v4.new_code_cell(params_src)
    par.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# test"), par, nbformat.v4.new_code_cell(body_src)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture
def lab(tmp_path):
    nbs, profiles = tmp_path / "notebooks", tmp_path / "profiles"
    nbs.mkdir(), profiles.mkdir()
    make_notebook(nbs / "01_good.ipynb", "n: int = 2  # how many\nname: str = 'x'  # a name",
                  "from kdlib.lab.emit import emit, finding\nimport matplotlib.pyplot as plt\n"
                  "plt.plot([1, 2, 3]); plt.show()\nemit('square', n * n, higher_is_better=True)\n"
                  "emit('name_len', len(name), std=0.5)\nfinding(f'the square is {n * n}')")
    make_notebook(nbs / "02_bad.ipynb", "x: int = 1  # x",
                  "from kdlib.lab.emit import emit\nemit('before_failure', x)\nraise ValueError('boom in cell')")
    (profiles / "t.yaml").write_text("parameters: {n: 3}\nnotebooks:\n  02_bad: {x: 7}\n")
    return nbs, profiles, tmp_path / "reports"


@pytest.mark.slow
def test_runs_publish_reports_and_mark_failures(lab):
    nbs, profiles, out = lab
    recs = runner.run_all("t", None, {"name": "abcd"}, out, write_record=True, folder=nbs, profiles_dir=profiles)
    good, bad = recs
    assert good["status"] == "ok" and bad["status"] == "failed"
    assert {m["name"]: m["value"] for m in good["metrics"]} == {"square": 9, "name_len": 4}
    assert good["finding"] == "the square is 9" and good["figure"] == "01_good.png" and bad["figure"] is None
    assert (out / "01_good.png").read_bytes()[:4] == b"\x89PNG"
    assert good["parameters"] == {"n": 3, "name": "abcd"}
    assert bad["metrics"] == [{"name": "before_failure", "value": 7}]  # metrics up to the failure survive
    assert bad["error"]["ename"] == "ValueError" and "boom in cell" in bad["error"]["evalue"]
    html = (out / "01_good.html").read_text()
    assert "data:image/png;base64" in html  # the plot is embedded, the page stands alone
    assert "boom in cell" in (out / "02_bad.html").read_text()  # the failing report shows where
    index = (out / "index.html").read_text()
    assert "01_good.html" in index and "failed" in index and "square = 9" in index
    assert json.loads((out / "01_good.json").read_text())["git"]["commit"]
    # results of record keep only successful runs, and RESULTS.md lists them
    assert (out / "results" / "t" / "01_good.json").is_file()
    assert not (out / "results" / "t" / "02_bad.json").exists()
    assert "| square | 9 |" in (out / "RESULTS.md").read_text()
    # the index shows the finding and the key figure, and a later run beside the result of record
    assert "the square is 9" in index and "src='01_good.png'" in index
    runner.run_all("t", ["01"], {"n": "4"}, out, write_record=False, folder=nbs, profiles_dir=profiles)
    index = (out / "index.html").read_text()
    assert "square = 16 <span class='rec'>record 9, <span class='up'>+7</span>" in index


def test_cli_refuses_misspelt_parameter_before_running(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "kdlib", "run", "--profile", "smoke", "-p", "max_new_token=3",
                           "--reports-dir", str(tmp_path)], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "unknown parameter 'max_new_token'" in proc.stderr and "max_new_tokens" in proc.stderr
    assert not list(tmp_path.iterdir())  # nothing ran, nothing written


def test_cli_refuses_ill_typed_parameter_and_unknown_notebook(tmp_path):
    base = [sys.executable, "-m", "kdlib", "run", "--reports-dir", str(tmp_path)]
    proc = subprocess.run(base + ["-p", "seed=zero"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "parameter 'seed'" in proc.stderr and "must be int" in proc.stderr
    proc = subprocess.run(base + ["--only", "99"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no such notebook" in proc.stderr


def test_discover_orders_and_selects(lab):
    nbs, _, _ = lab
    assert [p.stem for p in runner.discover(None, nbs)] == ["01_good", "02_bad"]
    assert [p.stem for p in runner.discover(["02"], nbs)] == ["02_bad"]


def test_parameter_line_papermill_cannot_parse_is_an_error(tmp_path):
    from kdlib.lab import params

    path = tmp_path / "nb.ipynb"
    make_notebook(path, "a: int = 1  # fine\nb = 3; c = 4", "pass")  # papermill drops line 2 with a warning
    with pytest.raises(params.ParameterError, match=r"could not parse the parameter line\(s\) for \['b', 'c'\]"):
        params.notebook_params(path)


def test_the_multilingual_teacher_id_is_taken_unchanged_by_the_synthesis_notebooks():
    from kdlib.registry.models import MULTILINGUAL_TEACHER_ID

    todo = runner.plan("smoke", ["03", "05"], {"teacher": MULTILINGUAL_TEACHER_ID})
    assert [values["teacher"] for values in todo.values()] == [MULTILINGUAL_TEACHER_ID] * 2
    from kdlib.registry import models

    assert (models.resolve(MULTILINGUAL_TEACHER_ID).path / "config.json").is_file()  # and it loads from somewhere
