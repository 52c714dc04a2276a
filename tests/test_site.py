"""The course website (lesson 11): link fixing, page preparation, the build, the `docs` command, and every page
checked in headless Chromium (skipped, with the reason, where Chromium or its driver is not installed)."""
import json, os, subprocess, sys
from pathlib import Path
import pytest
from dino_course import site
from dino_course.cli import main

ROOT = Path(__file__).resolve().parents[1]
PAGES = {p.resolve() for p in site.lesson_notebooks(ROOT)} | {(ROOT / 'README.md').resolve()}

def test_lessons_in_order_without_index():
    names = [p.stem for p in site.lesson_notebooks(ROOT)]
    assert names == sorted(names) and 'index' not in names and names[0] == '00_core'

def test_fix_links_keeps_pages_and_points_repo_files_at_the_repository():
    src = ROOT / 'nbs' / '05_dino.ipynb'
    text = "[a](05b_train.ipynb) [b](../data/README.md#models) [c](https://x.org/y) [d](#the-idea) [e](../README.md)"
    out = site.fix_links(text, src, ROOT, PAGES)
    assert '[a](05b_train.ipynb)' in out and '[e](../README.md)' in out            # pages of the site: kept
    assert '[b](https://github.com/dino-course/dino-course/blob/main/data/README.md#models)' in out
    assert '[c](https://x.org/y)' in out and '[d](#the-idea)' in out               # external, anchors: untouched

def test_page_notebook_drops_nbdev_bookkeeping_and_keeps_outputs():
    out = [{'output_type': 'stream', 'name': 'stdout', 'text': '42\n'}]
    nb = {'cells': [{'cell_type': 'code', 'source': '#| default_exp x', 'outputs': []},
                    {'cell_type': 'code', 'source': '#| export\ndef f(): return 42\nf()', 'outputs': out},
                    {'cell_type': 'code', 'source': '#| hide\nimport nbdev', 'outputs': []},
                    {'cell_type': 'code', 'source': '#| slow\nrun_on_imagenette()', 'outputs': []}]}
    cells = site.page_notebook(nb, ROOT / 'nbs' / 'x.ipynb', ROOT, PAGES)['cells']
    assert [c['source'] for c in cells] == ['def f(): return 42\nf()', '#| slow\nrun_on_imagenette()']
    assert cells[0]['outputs'] == out

def test_repo_root_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match='settings.ini'): site.repo_root(tmp_path)

def test_docs_without_sphinx_is_a_one_line_error(monkeypatch, capsys):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda n, *a: None if n == 'myst_nb' else real(n, *a))
    assert main(['docs', '--out', '/tmp/never']) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install -e '.[docs]'" in err and len(err.splitlines()) == 1 and 'Traceback' not in err

@pytest.fixture(scope='module')
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp('site')
    assert main(['docs', '--out', str(out)]) == 0
    return out

def test_site_has_a_page_per_lesson_api_and_search(built):
    assert (built / 'index.html').is_file() and (built / 'search.html').is_file() and (built / 'searchindex.js').is_file()
    for p in site.lesson_notebooks(ROOT): assert (built / 'nbs' / f'{p.stem}.html').is_file(), p.stem
    assert (built / 'api' / 'dino.html').is_file() and 'DINOLoss' in (built / 'api' / 'dino.html').read_text()
    home = (built / 'index.html').read_text()
    assert 'What the main job learns' in home and 'nbs/05_dino.html' in home     # the README, linking the lessons
    # stored figures made it: as many images on a lesson page as PNG outputs in its notebook
    nb = json.loads((ROOT / 'nbs' / '05_dino.ipynb').read_text())
    n_png = sum('image/png' in o.get('data', {}) for c in nb['cells'] for o in c.get('outputs', []))
    assert n_png > 0 and (built / 'nbs' / '05_dino.html').read_text().count('<img') >= n_png

@pytest.mark.skipif(None in site.find_browser(), reason="no Chromium/chromedriver (Debian: apt-get install chromium chromium-driver)")
def test_every_page_loads_cleanly_in_headless_chromium(built, tmp_path):
    shots = Path(os.environ.get('DINO_COURSE_SCREENSHOTS', tmp_path))
    problems = site.check_site(built, site.pages_with_figures(ROOT), ('nbs/05_dino.html', 'nbs/06_collapse.html'), shots)
    assert len(problems) >= len(site.lesson_notebooks(ROOT)) + 5
    assert not any(problems.values()), {p: v for p, v in problems.items() if v}
    assert (shots / 'nbs_05_dino.png').stat().st_size > 10_000 and (shots / 'nbs_06_collapse.png').is_file()

@pytest.mark.skipif(None in site.find_browser(), reason="no Chromium/chromedriver")
def test_check_site_reports_a_broken_image_and_link(built, tmp_path):
    import shutil
    bad = tmp_path / 'bad'; shutil.copytree(built, bad)
    page = bad / 'nbs' / '00_core.html'
    page.write_text(page.read_text().replace('</body>', '<img src="../_images/none.png"><a href="nope.html">x</a></body>'))
    problems = site.check_site(bad, pages_with_figures=('nbs/10_bench.html',))['nbs/00_core.html']
    assert any('image not loaded' in p for p in problems) and any('broken link: nbs/nope.html' in p for p in problems)
