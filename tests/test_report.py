import re
import shutil

from gsrcl.report import page
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


def test_the_umap_comes_from_the_kept_encoder_when_fold_0s_was_pruned(tmp_path, monkeypatch):
    """keep_encoders="chosen" removes fold 0's encoder when another fold's checkpoint scored
    better on validation: the UMAP is drawn from the encoder kept (the one export takes), and
    under "all" from that same fold."""
    import json
    from dataclasses import replace

    from gsrcl.config.settings import Storage
    from gsrcl.runner import jobs, retention
    from gsrcl.runner.run_folder import RunFolder

    methods = tiny_experiment(tmp_path).methods[:1]
    keep_all = tiny_experiment(tmp_path, methods=methods, storage=Storage(keep_encoders="all"))
    assert run_experiment(keep_all, log=lambda _: None) == 0
    run, method = RunFolder.of(keep_all), keep_all.methods[0].name
    job = jobs.Job("pbmc68k_reduced", method, 0)
    fold0 = run.job(job)
    # fold 0 scores worst on validation for every type, whatever the training drew
    record = json.loads((fold0.path / "metrics.json").read_text())
    rows = [{**row, "validation_score": -1.0} for row in record["rows"]]
    fold0.write_metrics(record["job"], rows, record["seconds"], record["solvers"])
    fold0.mark_done(jobs.fingerprint(keep_all, job), "cpu", 1.0)
    task = rows[0]["task"]

    def umap_fold(experiment) -> str:
        assert report_only(experiment, log=lambda _: None) == 0
        page = (run.path / "report.html").read_text()
        assert "not drawn" not in page
        assert (run.path / "figures" / "pbmc68k_reduced-umap.png").exists()
        kept = re.search(r"embedding \(fold (\d), encoder chosen for ([^,)]+)", page)
        assert kept and kept.group(2) == task
        return kept.group(1)

    assert umap_fold(keep_all) != "0"
    chosen = replace(keep_all, storage=Storage(keep_encoders="chosen"))
    # a fold being run again is left alone: its worker may be rewriting the folder
    retention.prune(chosen, run, job.dataset, method, running={job})
    assert fold0.encoder_path(task).exists() and not fold0.pruned_tasks()
    retention.prune(chosen, run, job.dataset, method)
    assert not fold0.encoder_path(task).exists() and task in fold0.pruned_tasks()
    assert umap_fold(chosen) != "0"
    # a larger dataset's UMAPs show a random sample of its cells, and say so
    monkeypatch.setattr(page, "UMAP_CELLS", 100)
    umap_fold(chosen)
    assert "; a random 100 of its 700 cells)" in (run.path / "report.html").read_text()
