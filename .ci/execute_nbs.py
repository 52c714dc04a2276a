#!/usr/bin/env python
"""Run notebooks top to bottom exactly as `nbdev_test` does (cells flagged `#| slow` / `#| cuda` are
skipped) and save their outputs into the notebook, so the committed lessons show a real run.

    python .ci/execute_nbs.py nbs/01_data.ipynb [more.ipynb ...]   # then: nbdev_clean

nbdev 2 has no "execute and keep outputs" command that honours `tst_flags`, hence this small script.
The notebook is read raw (`read_nb`) and directives are parsed without removing them, so the saved
notebook keeps every `#| export` line.
"""
import os, sys, time
from pathlib import Path
from execnb.nbio import read_nb, write_nb
from execnb.shell import CaptureShell
from fastcore.xtras import working_directory
from nbdev.config import get_config
from nbdev.process import extract_directives

def execute(fn: Path, skip_flags=('slow', 'cuda')):
    os.environ['IN_TEST'] = '1'   # same quiet mode as nbdev_test (no progress bars)
    nb = read_nb(fn)
    def _skip(cell):
        if cell.cell_type != 'code': return True
        d = extract_directives(cell, remove=False)
        if d.get('eval:', [''])[0].lower() == 'false': return True
        if 'nbdev_export(' in cell.source: return True
        if set(skip_flags) & d.keys():
            cell.outputs = []
            return True
    sh = CaptureShell(fn, mpl_format='png')
    t0 = time.time()
    with working_directory(fn.parent): sh.run_all(nb, exc_stop=True, preproc=_skip)
    write_nb(nb, fn)
    print(f'{fn.name}: {time.time()-t0:.0f}s, {fn.stat().st_size/1e3:.0f} kB')

if __name__ == '__main__':
    cfg = get_config()
    sys.path.insert(0, str(cfg.config_path))
    for f in sys.argv[1:]: execute(Path(f).absolute())
