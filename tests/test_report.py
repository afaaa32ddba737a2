import re
import shutil

from gsrcl.runner.pipeline import report_only, run_experiment
from tests.conftest import tiny_experiment


def test_report_from_a_tiny_real_run_and_rebuilt_after_a_failure(tmp_path):
    experiment = tiny_experiment(tmp_path, methods=tiny_experiment(tmp_path).methods[:2])
    assert run_experiment(experiment, log=lambda _: None) == 0
    run_dir = tmp_path / "results" / "tiny"

    page = (run_dir / "report.html").read_text()
    assert "<h1>GsRCL report: tiny</h1>" in page and "scikit-learn" in page
    for method in ("baseline-svm", "simclr-noise", "supcon-noise"):
        assert f"<th>{method}</th>" in page
    assert "CD19+ B" in page and "<b>" in page  # the best per row is marked
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) == 5
    figures = sorted(p.name for p in (run_dir / "figures").glob("*.png"))
    assert figures == [
        "pbmc68k_reduced-mcc.png",
        "pbmc68k_reduced-pr.png",
        "pbmc68k_reduced-simclr-noise-training.png",
        "pbmc68k_reduced-supcon-noise-training.png",
        "pbmc68k_reduced-umap.png",
    ]
    markdown = (run_dir / "summary.md").read_text()
    assert "| dataset | task | baseline-svm | simclr-noise | supcon-noise |" in markdown
    assert re.search(r"\| pbmc68k_reduced \| CD19\+ B \| .*\d\.\d{3} ± \d\.\d{3}", markdown)

    # a partly failed run still gets a report that says what failed and what is missing
    failed = run_dir / "jobs" / "pbmc68k_reduced" / "supcon-noise" / "fold-1"
    shutil.rmtree(failed)
    failed.mkdir()
    (failed / "error.txt").write_text("ValueError: injected\n\nTraceback ...")
    shutil.rmtree(run_dir / "jobs" / "pbmc68k_reduced" / "supcon-noise" / "fold-2")
    (run_dir / "report.html").unlink()
    assert report_only(experiment, log=lambda _: None) == 0
    page = (run_dir / "report.html").read_text()
    assert "Failed or missing jobs" in page and "7 done, 2 not done" in page
    assert "supcon-noise/fold-1: failed ValueError: injected" in page
    assert "supcon-noise/fold-2: not run" in page


def test_a_figure_that_cannot_be_drawn_is_a_note_on_the_page_not_a_failure(tmp_path, caplog):
    import numpy as np

    from gsrcl.report import figures
    from gsrcl.report.page import FigureSet
    from gsrcl.runner.run_folder import RunFolder

    figs = FigureSet(RunFolder(tmp_path / "run"))
    one_gene = np.random.default_rng(0).poisson(2, size=(40, 1))
    with caplog.at_level("WARNING"):
        figs.attempt("d: the UMAPs", lambda: figures.umap_coordinates(one_gene))
        figs.attempt("d: a figure", lambda: None)
    assert len(figs.html) == 1 and figs.html[0].startswith('<p class="note">d: the UMAPs not')
    assert not caplog.records  # no failure line
