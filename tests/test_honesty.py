"""The course's text says only what is there: no link to a missing file, no lesson that does not exist, no
`dino-course` flag the CLI does not have (README.md, data/README.md and every notebook's markdown and comments)."""
import json, re
from pathlib import Path
import pytest
from dino_course import cli

ROOT = Path(__file__).resolve().parents[1]
NBS = sorted((ROOT / 'nbs').glob('*.ipynb'))
LESSONS = {p.stem for p in NBS}
NUMBERS = {re.match(r'\d+[a-z]?', s).group(0) for s in LESSONS if re.match(r'\d', s)}

def texts():
    "(where, text, base folder for relative links): the READMEs, each notebook's markdown cells and code-cell comments."
    for p in (ROOT / 'README.md', ROOT / 'data' / 'README.md'):
        yield p.relative_to(ROOT).as_posix(), p.read_text(), p.parent
    for p in NBS:
        for i, c in enumerate(json.loads(p.read_text())['cells']):
            s = ''.join(c['source'])
            if c['cell_type'] == 'code': s = '\n'.join(l[l.index('#'):] for l in s.splitlines() if '#' in l and not l.lstrip().startswith('#|'))
            yield f"{p.name} cell {i}", s, p.parent

def cli_flags() -> set[str]:
    "Every long option of every `dino-course` command, for every method."
    flags = set()
    for method in [None, *cli.METHODS]:
        p = cli.build_parser(method)
        subs = next(a for a in p._actions if a.__class__.__name__ == '_SubParsersAction').choices
        for q in [p, *subs.values()]:
            for a in q._actions: flags |= {o for o in a.option_strings if o.startswith('--')}
    return flags | {'--help'}

def test_relative_links_point_at_files_that_exist():
    bad = []
    for where, text, base in texts():
        for target in re.findall(r'\]\(([^)\s]+)\)', re.sub(r'`[^`\n]*`', '', text)):     # not inside `code`
            if re.match(r'^[a-z]+:|^#', target): continue
            if not (base / target.split('#')[0]).exists(): bad.append(f"{where}: {target}")
    assert not bad, bad

def test_named_lessons_exist():
    "`05b_train`-style names and 'lesson NN' / 'lessons NN and MM' refer to notebooks that are in nbs/."
    bad = []
    for where, text, _ in texts():
        for name in re.findall(r'(?<![\w/.-])(\d\d[a-z]?_[a-z][a-z_]*[a-z])(?![\w-])', text):
            if name not in LESSONS and not name.endswith('_'): bad.append(f"{where}: {name}")
        for group in re.findall(r'[Ll]essons? ((?:\d\d[a-z]?(?:, | and | or |-|–)?)+)', text):
            for n in re.findall(r'\d\d[a-z]?', group):
                if n not in NUMBERS: bad.append(f"{where}: lesson {n}")
    assert not bad, bad

def test_dino_course_commands_use_real_flags():
    flags, bad = cli_flags(), []
    for where, text, _ in texts():
        for line in re.findall(r'dino-course [^\n`]*', text):
            for f in re.findall(r'(?<![\w-])--[a-z][a-z0-9-]*', line.split(' | ')[0]):
                if f not in flags: bad.append(f"{where}: {f} in `{line.strip()[:80]}`")
    assert not bad, bad

def test_the_scan_catches_what_it_should(tmp_path, monkeypatch):
    "The scans are not vacuous: a made-up lesson, link and flag are each reported."
    fake = [('x.md', 'see 07_nowhere and lesson 42, [here](no/such/file.md), `dino-course train --no-such-flag`', tmp_path)]
    monkeypatch.setattr(__import__(__name__), 'texts', lambda: iter(fake))
    for test in (test_relative_links_point_at_files_that_exist, test_named_lessons_exist, test_dino_course_commands_use_real_flags):
        with pytest.raises(AssertionError): test()

LESSON_NBS = [p for p in NBS if p.stem != 'index']

@pytest.mark.parametrize('nb', LESSON_NBS, ids=[p.stem for p in LESSON_NBS])
def test_lesson_ends_with_summary_exercises_references(nb):
    heads = [l.strip() for c in json.loads(nb.read_text())['cells'] if c['cell_type'] == 'markdown'
             for l in ''.join(c['source']).splitlines() if l.startswith('#')]
    assert heads[-3:] == ['## Summary', '## Exercises', '## References'], heads[-3:]

@pytest.mark.parametrize('nb', LESSON_NBS, ids=[p.stem for p in LESSON_NBS])
def test_assert_cells_show_what_they_check(nb):
    "A cell that asserts (and runs in CI) prints or displays something in the committed run, so a reader sees the check ran."
    silent = []
    for i, c in enumerate(json.loads(nb.read_text())['cells']):
        s = ''.join(c['source'])
        if c['cell_type'] != 'code' or re.search(r'#\|\s*(slow|cuda|export|eval:\s*false|hide)', s): continue
        if re.search(r'^\s*(assert |test_(eq|close|fail|ne|is)\()', s, re.M) and not c.get('outputs'): silent.append(i)
    assert not silent, f"cells {silent} assert without showing the value they check"
