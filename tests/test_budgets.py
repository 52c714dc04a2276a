"tests/check_budgets.py: the per-lesson time budget that tests/run_all.sh applies to nbdev_test's timings."
import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location('check_budgets', Path(__file__).with_name('check_budgets.py'))
cb = importlib.util.module_from_spec(spec); spec.loader.exec_module(cb)

def test_every_lesson_within_budget_passes(capsys):
    assert cb.main("Starting /x/00_core.ipynb\n00_core.ipynb: 7 secs\n02_vit.ipynb: 171 secs\n") == 0
    assert '02_vit' in capsys.readouterr().out

def test_a_lesson_over_budget_fails_naming_it_and_its_budget(capsys):
    assert cb.main("00_core.ipynb: 7 secs\n06_collapse.ipynb: 190 secs\n") == 1
    out = capsys.readouterr().out
    assert 'FAILED: 06_collapse took 190 s, over its budget of 180 s' in out and '00_core' in out

def test_no_timings_is_a_failure_not_a_pass():
    assert cb.main("nbdev_test crashed\n") == 1

def test_the_budget_file_has_a_default_of_three_minutes():
    assert cb.budgets()['default'] == 180
