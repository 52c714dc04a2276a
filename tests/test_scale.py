"""`DINO_COURSE_SCALE`: every lesson's top cell declares its knobs (what `full` changes), each knob changes and is
read, the real-data lessons name a real dataset at full scale and check it is on disk before their `#| slow` cells,
and the helpers stop with one line (the download command) when data or weights are absent."""
import ast, json, os, re, sys, traceback
from pathlib import Path
import pytest
from dino_course import core, data
from dino_course.core import Knobs, knobs, MissingFileError, require_file
from dino_course.data import DatasetNotFoundError, require_data, fetch_command
from dino_course.course_models import TRAINED_DINO

NBS = Path(__file__).resolve().parent.parent / 'nbs'
LESSONS = sorted(p.stem for p in NBS.glob('*.ipynb') if p.stem != 'index')
REAL = set(data.DATASET_NAMES) - set(data.BUILT_IN)
# the lessons whose full form runs on real data (their `#| slow` cells): DATA is built in at cpu, real at full
REAL_DATA = {'01_data', '02b_evaluate', '04_byol', '07_finetune', '08_experiments', '09_segment'}
DEMO = {'00_core'}       # lesson 00 defines `knobs` and shows the pattern; its table is an illustration


def _cells(stem):
    return [c for c in json.loads((NBS / f'{stem}.ipynb').read_text())['cells'] if c['cell_type'] == 'code']

def _src(c): return ''.join(c['source'])
def _exported(c): return _src(c).lstrip().startswith('#| export')
def _slow(c): return bool(re.search(r'^#\|\s*(slow|cuda)\b', _src(c), re.M))

def _python(s):
    "A cell's source without IPython-only lines (magics, shell escapes), parseable by `ast`."
    return '\n'.join('' if l.lstrip().startswith(('%', '!')) else l for l in s.splitlines())

def _bound(s):
    "Names a cell binds at its top level (assignments, for loops, imports, definitions)."
    names = set()
    for node in ast.parse(_python(s)).body:
        targets = (node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign, ast.For))
                   else [])
        for t in targets: names |= {n.id for n in ast.walk(t) if isinstance(n, ast.Name)}
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)): names.add(node.name)
        if isinstance(node, (ast.Import, ast.ImportFrom)): names |= {(a.asname or a.name).split('.')[0] for a in node.names}
    return names

def _knobs_calls(stem):
    "(cell index, source of the call) of each `K = knobs(...)` in the lesson's (not exported) code cells."
    found = []
    for i, c in enumerate(_cells(stem)):
        if _exported(c): continue
        s = _python(_src(c))
        for node in ast.walk(ast.parse(s)):
            if (isinstance(node, ast.Assign) and [getattr(t, 'id', None) for t in node.targets] == ['K']
                    and isinstance(node.value, ast.Call) and getattr(node.value.func, 'id', None) == 'knobs'):
                found.append((i, ast.get_source_segment(s, node.value)))
    return found

def _declared(stem, scale):
    """The lesson's knobs evaluated at `scale` (the call alone: its values must not depend on the lesson's state; the
    one name it may use besides `knobs` is the course's constant `TRAINED_DINO`, the trained DINO's model name)."""
    (_, call), = _knobs_calls(stem)
    return eval(call, {'knobs': lambda **pairs: Knobs(scale, **pairs), 'TRAINED_DINO': TRAINED_DINO})


@pytest.mark.parametrize('stem', LESSONS)
def test_lesson_declares_its_knobs_at_the_top(stem):
    calls = _knobs_calls(stem)
    assert len(calls) == 1, f"{stem}: {len(calls)} `K = knobs(...)` cells; every lesson needs exactly one"
    i, _ = calls[0]
    cells = _cells(stem)
    if stem not in DEMO:
        assert i <= 6, f"{stem}: the knobs cell is code cell {i}; it belongs right after the imports"
    reads = [j for j, c in enumerate(cells) if not _exported(c) and re.search(r'\bK(\.[A-Z_]+|\[)', _src(c))]
    assert not reads or reads[0] >= i, f"{stem}: code cell {reads[0]} reads K before the knobs cell {i}"
    # a later cell that rebinds K (say `K, B = 64, 8`) would hand the cells after it a number instead of the knobs
    rebinds = [j for j, c in enumerate(cells) if j != i and not _exported(c) and 'K' in _bound(_src(c))]
    assert not [j for j in reads if any(r < j for r in rebinds)], f"{stem}: cells {rebinds} rebind K before cells that read the knobs"


@pytest.mark.parametrize('stem', LESSONS)
def test_every_knob_changes_and_is_read(stem):
    cpu, full = _declared(stem, 'cpu'), _declared(stem, 'full')
    assert list(cpu) == list(full) and cpu.scale == 'cpu' and full.scale == 'full'
    for name in cpu: assert cpu[name] != full[name], f"{stem}: knob {name} is {cpu[name]!r} at both scales"
    code = '\n'.join(_src(c) for c in _cells(stem) if not _exported(c))
    if stem not in DEMO:
        unread = [n for n in cpu if not re.search(rf"\bK(\.{n}\b|\[['\"]{n}['\"]\])", code)]
        assert not unread, f"{stem}: knobs {unread} are declared but no cell reads them"
        # a value that depends on the scale is a knob, so the top cell's table lists everything `full` changes
        assert 'by_scale(' not in code, f"{stem}: a `by_scale(...)` outside the knobs cell"


@pytest.mark.parametrize('stem', sorted(REAL_DATA))
def test_real_data_lessons_switch_dataset_and_check_it_first(stem):
    cpu, full = _declared(stem, 'cpu'), _declared(stem, 'full')
    names = lambda v: [v] if isinstance(v, str) else list(v)
    assert 'DATA' in cpu, f"{stem}: no DATA knob"
    assert set(names(cpu.DATA)) <= set(data.BUILT_IN), cpu.DATA
    assert set(names(full.DATA)) <= REAL, full.DATA
    cells = _cells(stem)
    checks = [j for j, c in enumerate(cells) if not _slow(c) and 'require_data(K.DATA' in _src(c)]
    uses = [j for j, c in enumerate(cells) if _slow(c) and re.search(r'\bK\.DATA\b', _src(c))]
    assert checks, f"{stem}: no (not slow) cell checks the data with require_data(K.DATA...)"
    assert uses, f"{stem}: no `#| slow` cell reads K.DATA"
    first_slow = min(j for j, c in enumerate(cells) if _slow(c))
    assert checks[0] < first_slow, f"{stem}: the data check (cell {checks[0]}) comes after the first slow cell {first_slow}"


def test_knobs_values_table_and_errors(monkeypatch):
    spec = dict(DATA=('shapes', 'stl10', 'dataset'), CROPS=((64, 32), (224, 96)))
    cpu, full = knobs('cpu', **spec), knobs('full', **spec)
    assert (cpu.DATA, cpu['CROPS'], full.DATA, full.CROPS) == ('shapes', (64, 32), 'stl10', (224, 96))
    assert dict(full) == {'DATA': 'stl10', 'CROPS': (224, 96)}
    t = cpu._repr_markdown_()
    assert '| `DATA` | dataset | **shapes** | stl10 |' in t and '| `CROPS` |  | **64, 32** | 224, 96 |' in t
    assert '**stl10**' in full.table() and 'scale now: **full**' in full.table()
    assert repr(cpu).splitlines()[1].split() == ['DATA', 'shapes', '->', 'stl10', '(dataset)']
    assert 'nothing in this lesson changes' in knobs('cpu').table()
    with pytest.raises(ValueError, match='not a knob'): knobs(SIZE=(32, 32))
    with pytest.raises(ValueError, match=r"give \(cpu, full\)"): knobs(SIZE=32)
    with pytest.raises(ValueError, match=r"give \(cpu, full\)"): knobs(SIZE=(1, 2, 3))
    with pytest.raises(AttributeError, match='knobs: DATA, CROPS'): cpu.SIZE
    monkeypatch.setenv('DINO_COURSE_SCALE', 'full')
    assert knobs(**spec).DATA == 'stl10'
    monkeypatch.setenv('DINO_COURSE_SCALE', 'huge')
    with pytest.raises(ValueError, match='DINO_COURSE_SCALE=full'): knobs(**spec)


def test_require_file(tmp_path):
    (tmp_path / 'w.pth').write_bytes(b'x')
    assert require_file(tmp_path / 'w.pth', 'unused') == tmp_path / 'w.pth'
    with pytest.raises(FileNotFoundError) as e: require_file(tmp_path / 'no.pth', 'fetch it with `curl -O URL`')
    assert isinstance(e.value, MissingFileError)
    assert e.value._render_traceback_() == [f"MissingFileError: {tmp_path / 'no.pth'} not found: fetch it with `curl -O URL`"]


@pytest.mark.parametrize('name', sorted(REAL))
def test_require_data_absent_is_one_line_with_the_command(name, tmp_path):
    assert require_data(['shapes', 'photos'], root=tmp_path) == 'shapes: built in, nothing to fetch; photos: built in, nothing to fetch'
    with pytest.raises(DatasetNotFoundError) as e: require_data(['shapes', name], root=tmp_path)
    assert isinstance(e.value, MissingFileError) and isinstance(e.value, FileNotFoundError)
    from dino_course import download; key = download._archive_key(name, 320)
    shown = e.value._render_traceback_()
    assert len(shown) == 1 and '\n' not in shown[0] and f'`{fetch_command(key, tmp_path)}`' in shown[0], shown


def test_ipython_shows_one_line_not_a_traceback(tmp_path, capsys):
    "What a Jupyter cell shows: IPython renders the exception with `_render_traceback_` (no frames, no source)."
    from IPython.core.interactiveshell import InteractiveShell
    sh = InteractiveShell.instance()
    try:
        res = sh.run_cell(f"from dino_course.data import require_data\nrequire_data('stl10', root={str(tmp_path)!r})")
        assert isinstance(res.error_in_exec, DatasetNotFoundError)
        out = [l for l in capsys.readouterr().out.splitlines() if l.strip()]
        assert len(out) == 1 and out[0].startswith('DatasetNotFoundError: STL-10 not found'), out
        assert f'`python -m dino_course.data download stl10 --root {tmp_path}`' in out[0]
        assert 'Traceback' not in out[0] and 'File "' not in out[0]
    finally: InteractiveShell.clear_instance()


def test_execnb_run_ends_with_the_message(tmp_path):
    "Under nbdev_test / execnb (which formats tracebacks itself) the run stops at that cell, its last line the message."
    from execnb.shell import CaptureShell
    from execnb.nbio import dict2nb
    nb = dict2nb({'cells': [{'cell_type': 'code', 'source': f"from dino_course.data import require_data\nrequire_data('voc', root={str(tmp_path)!r})",
                             'outputs': [], 'metadata': {}, 'execution_count': None},
                            {'cell_type': 'code', 'source': "ran_on = True", 'outputs': [], 'metadata': {}, 'execution_count': None}],
                  'metadata': {}, 'nbformat': 4, 'nbformat_minor': 5})
    sh = CaptureShell()
    with pytest.raises(DatasetNotFoundError) as e: sh.run_all(nb, exc_stop=True)
    last = traceback.format_exception(e.value)[-1].strip()
    assert last.startswith('dino_course.download.DatasetNotFoundError: PASCAL VOC 2012 not found')
    assert f'`python -m dino_course.data download voc --root {tmp_path}`' in last
    assert 'ran_on' not in sh.user_ns             # the lesson stopped at the data cell
