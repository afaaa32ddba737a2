import textwrap

import pytest

from gsrcl.config.configfile import apply_override, load_experiment
from gsrcl.config.presets import PAPER
from gsrcl.errors import UserError
from runner import main
from tests.conftest import PBMC

HEADER = """
from gsrcl.config.settings import *
from gsrcl.config.presets import PAPER
"""


def _config(tmp_path, body: str):
    path = tmp_path / "config.py"
    path.write_text(HEADER + textwrap.dedent(body))
    return path


def test_the_paper_preset_holds_the_papers_numbers():
    c = PAPER.contrastive
    assert (c.epochs, c.validate_every, c.batch_size) == (
        {"simclr": 3000, "supcon": 1000},
        50,
        8192,
    )
    assert (c.lr, c.weight_decay, c.temperature, c.init_std) == (1e-4, 1e-6, 0.07, 0.02)
    noise = PAPER.methods[0]
    assert (noise.encoder, noise.head, noise.noise_sigma) == (
        (4096, 4096, 4096, 2048),
        (512, 128),
        1.0,
    )
    assert [m.n_genes for m in PAPER.methods[2:]] == [500, 1000, 3000, 5000]
    assert PAPER.methods[2].encoder == (384, 256, 128, 64) and PAPER.methods[5].encoder == (
        2048,
        1024,
        512,
        128,
    )
    assert PAPER.methods[2].mask_p == 0.9
    assert (PAPER.split.validation_fraction, PAPER.split.folds) == (0.2, 5)
    assert PAPER.evaluation.classifier.grid == {
        "gamma": ["scale", 1e-4, 1e-3, 1e-2],
        "C": [0.1, 1, 10, 100],
    }
    assert PAPER.evaluation.metric == "mcc"


def test_unknown_field_is_named(tmp_path):
    path = _config(
        tmp_path,
        """
        EXPERIMENT = Experiment(name="x", datasets=(Dataset(name="d", path="p"),),
                                contrastive=Contrastive(epoks=3))
    """,
    )
    with pytest.raises(UserError, match="Contrastive has no field 'epoks'.*'epochs'"):
        load_experiment(path)


def test_wrong_type_and_impossible_value_are_named(tmp_path):
    path = _config(
        tmp_path,
        """
        EXPERIMENT = Experiment(name="x", datasets=(Dataset(name="d", path="p"),),
                                contrastive=Contrastive(lr="fast"), split=Split(folds=1))
    """,
    )
    with pytest.raises(UserError) as error:
        load_experiment(path)
    assert "experiment.contrastive.lr must be float" in str(error.value)
    assert "experiment.split: folds must be at least 2" in str(error.value)


def test_method_settings_that_cannot_apply_are_refused():
    from gsrcl.config.settings import Dataset, Experiment, Method

    noise = Method(loss="simclr", augmentation="noise", n_genes=500)
    masking = Method(loss="simclr", augmentation="masking")
    for method, message in (
        (noise, "n_genes applies to masking"),
        (masking, "masking needs n_genes"),
    ):
        with pytest.raises(UserError, match=message):
            Experiment(
                name="x", datasets=(Dataset(name="d", path="p"),), methods=(method,)
            ).validate()


def test_set_overrides_a_nested_field_and_rejects_unknown_ones(tmp_path):
    path = _config(
        tmp_path,
        """
        EXPERIMENT = Experiment(name="x", datasets=(Dataset(name="d", path="p"),))
    """,
    )
    experiment = load_experiment(path, ["contrastive.epochs=20", "seed=7", "compute.devices=cpu"])
    assert experiment.contrastive.epochs == {"simclr": 20, "supcon": 20}
    assert experiment.seed == 7 and experiment.compute.devices == "cpu"
    with pytest.raises(UserError, match="Contrastive has no field 'epocs'"):
        apply_override(experiment, "contrastive.epocs=3")
    with pytest.raises(UserError, match="seed must be int"):
        load_experiment(path, ["seed=abc"])


def test_runner_prints_one_line_errors_without_traceback(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "missing.py")]) == 2
    err = capsys.readouterr().err
    assert "config file" in err and "not found" in err and "Traceback" not in err


def test_missing_dataset_file_is_a_clear_error(tmp_path, capsys):
    path = _config(
        tmp_path,
        f"""
        EXPERIMENT = Experiment(name="x", results_dir={str(tmp_path)!r},
                                datasets=(Dataset(name="d", path={str(tmp_path / "nope.h5ad")!r}),))
    """,
    )
    assert main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "nope.h5ad not found" in err and "Traceback" not in err


def test_shipped_configs_validate():
    for path in ("config.py", "configs/paper.py", "configs/baron_mouse.py"):
        experiment = load_experiment(path)
        assert experiment.datasets
    assert load_experiment("config.py").datasets[0] == PBMC


def test_a_config_with_a_syntax_error_names_the_file_and_line(tmp_path):
    path = _config(tmp_path, "EXPERIMENT = Experiment(name='x'\n")
    with pytest.raises(UserError, match="config.py, line"):
        load_experiment(path)


def test_the_exact_svm_threshold_is_validated_and_set_from_the_command_line(tmp_path):
    from gsrcl.config.settings import EXACT_MAX_CELLS, Dataset, Evaluation, Experiment

    def experiment(**evaluation):
        datasets = (Dataset(name="d", path="p"),)
        return Experiment(name="x", datasets=datasets, evaluation=Evaluation(**evaluation))

    assert experiment().evaluation.exact_max_cells == EXACT_MAX_CELLS == 9000
    experiment(exact_max_cells=None, solver="nystroem").validate()  # always exact / approximate
    for wrong, message in (
        ({"exact_max_cells": 0}, "exact_max_cells must be at least 1"),
        ({"exact_max_cells": 2.5}, "exact_max_cells must be int or None"),
        ({"nystroem_components": 1}, "nystroem_components must be at least 2"),
        ({"search_max_cells": 20}, "search_max_cells must be at least 10 × inner_folds"),
        ({"solver": "approximate"}, "solver must be one of"),
    ):
        with pytest.raises(UserError, match=message):
            experiment(**wrong).validate()
    path = _config(
        tmp_path, 'EXPERIMENT = Experiment(name="x", datasets=(Dataset(name="d", path="p"),))'
    )
    changed = load_experiment(path, ["evaluation.exact_max_cells=20000"])
    assert changed.evaluation.exact_max_cells == 20000
    assert (
        load_experiment(path, ["evaluation.exact_max_cells=None"]).evaluation.exact_max_cells
        is None
    )
