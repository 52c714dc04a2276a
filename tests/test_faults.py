"""Bad inputs and faults the `dino-course` CLI meets (issue 15): each ends with the documented exit code and a short
message that names the cause and a fix (at most three lines, no traceback), and no checkpoint or result is lost.
Exit codes: 0 done, 1 training diverged, 2 bad input / configuration / run directory, 3 the run directory could not
be written while training (the last checkpoint is kept), 130 interrupted (a checkpoint was saved)."""
import json, os, signal, subprocess, sys, time
from pathlib import Path
import numpy as np
import pytest
from PIL import Image
from dino_course.cli import main

TINY = ['--batch-size', '8', '--steps-per-epoch', '2', '--image-size', '16', '--global-size', '16', '--arch', 'vit_tiny',
        '--patch-size', '4', '--backbone-kwargs', '{"depth": 1, "embed_dim": 16, "num_heads": 2}', '--out-dim', '32',
        '--hidden-dim', '16', '--bottleneck-dim', '8', '--knn-train', '40', '--knn-test', '20', '--threads', '1', '--no-figures']

@pytest.fixture(autouse=True)
def quiet(monkeypatch): monkeypatch.setenv('DINO_COURSE_QUIET', '1')      # no progress bars in the captured stderr

def run(args, capsys):
    "Run the CLI in-process: (exit code, stderr)."
    code = main(list(map(str, args)))
    err = capsys.readouterr().err.strip()
    return code, err

def short(err: str, *words) -> None:
    "A message of at most three lines, no traceback, containing every one of `words`."
    lines = [l for l in err.splitlines() if l.strip() and not l.startswith('note:')]
    assert 'Traceback' not in err and 1 <= len(lines) <= 3, err
    for w in words: assert w in err, (w, err)

def images(folder: Path, classes=('cat', 'dog'), n=6, size=20):
    rng = np.random.default_rng(0)
    for c in classes:
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(n): Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / c / f'{i}.png')
    return folder

# ---------------------------------------------------------------- configuration: checked up front, flag named, fix given
BAD_CONFIG = [
    (['--patch-size', '5'], ['--patch-size', 'divide']),                         # 16 px crops, patch 5
    (['--patch-size', '32'], ['--patch-size']),                                   # a patch larger than the crop
    (['--n-local', '2', '--local-size', '24'], ['--local-size', '--global-size']),   # local crop larger than global
    (['--n-local', '2', '--local-size', '6'], ['--local-size', 'divide']),       # local crop not a multiple of the patch
    (['--global-size', '2'], ['--global-size']),
    (['--backbone-kwargs', '{"patch_size": 8}'], ['--backbone-kwargs', '--patch-size']),
    (['--backbone-kwargs', '{"drop_path_rate": 0.3}', '--drop-path', '0.1'], ['--backbone-kwargs', '--drop-path']),
    (['--aug-kwargs', '{"global_size": 32}'], ['--aug-kwargs', '--global-size']),
    (['--backbone-kwargs', '[1, 2]'], ['--backbone-kwargs']),
    (['--device', 'tpu'], ['--device']),
    (['--device', 'cuda:0'], ['--device']),
    (['--device', 'mps'], ['--device']),
    (['--lr', 'nan'], ['--lr']),
    (['--lr', '0'], ['--lr']),
    (['--batch-size', '0'], ['--batch-size']),
    (['--epochs', '0'], ['--epochs']),
    (['--minutes', '-1'], ['--minutes']),
    (['--global-scale', '0.5', '0.2'], ['--global-scale']),
    (['--blur', '1.5'], ['--blur']),
    (['--knn-k', '0'], ['--knn-k']),
    (['--arch', 'resnet_19'], ['--arch']),
    (['--method', 'swav'], ['--method']),
    (['--optimizer', 'lamb'], ['--optimizer']),
    (['--teacher-temp', '0'], ['--teacher-temp']),
    (['--momentum-teacher', '1.5'], ['--momentum-teacher']),
    (['--data', '/no/such/folder'], ['--data']),
]

@pytest.mark.parametrize('extra, words', BAD_CONFIG, ids=[' '.join(a) for a, _ in BAD_CONFIG])
def test_bad_configuration_is_refused_before_anything_is_built(extra, words, tmp_path, capsys):
    out = tmp_path / 'run'
    code, err = run(['train', '--data', 'shapes', '--epochs', '1', *TINY, *extra, '--out', out], capsys)
    assert code == 2, err
    short(err, *words)
    assert not out.exists()                                   # nothing was created: refused up front

def test_config_file_problems(tmp_path, capsys):
    bad = tmp_path / 'c.json'; bad.write_text('{"lr": ')
    code, err = run(['train', '--config', bad], capsys); assert code == 2; short(err, '--config', 'JSON')
    bad.write_text('{"lr_typo": 1}')
    code, err = run(['train', '--config', bad], capsys); assert code == 2; short(err, 'lr_typo')
    code, err = run(['train', '--config', tmp_path / 'none.json'], capsys); assert code == 2; short(err, '--config')

@pytest.mark.parametrize('args, words', [
    (['bench', '--steps', '0'], ['--steps']),
    (['bench', '--steps', '-3'], ['--steps']),
    (['bench', '--warmup', '-1'], ['--warmup']),
])
def test_bench_bad_counts(args, words, capsys):
    code, err = run(args, capsys); assert code == 2; short(err, *words)

# ---------------------------------------------------------------- data folders
def test_symlink_loop_in_data_folder_terminates_and_is_reported(tmp_path, capsys):
    data = images(tmp_path / 'data')
    os.symlink('..', data / 'cat' / 'up')                      # cat/up -> data: a loop
    with pytest.warns(UserWarning, match=r'link.*cat/up') as w:   # said, not silent (and it terminates)
        code, err = run(['train', '--data', data, '--epochs', '1', *TINY, '--out', tmp_path / 'run'], capsys)
    assert code == 0, err

def test_class_folders_linked_to_each_other_do_not_duplicate_images(tmp_path):
    from dino_course.data import SafeImageFolder
    data = images(tmp_path / 'data', n=4)
    os.symlink(data / 'dog', data / 'cat' / 'dogs')
    with pytest.warns(UserWarning, match='same file'):
        ds = SafeImageFolder(data)
    real = [os.path.realpath(p) for p, _ in ds.samples]
    assert len(real) == len(set(real)) == 8

def test_unreadable_class_folder_is_an_error_naming_it(tmp_path, capsys):
    if os.geteuid() == 0: pytest.skip("root reads every folder")
    data = images(tmp_path / 'data'); (data / 'dog').chmod(0)
    try:
        code, err = run(['train', '--data', data, '--epochs', '1', *TINY, '--out', tmp_path / 'run'], capsys)
        assert code == 2; short(err, 'dog')
    finally: (data / 'dog').chmod(0o755)

def test_unreadable_subfolder_is_reported(tmp_path):
    from dino_course.data import SafeImageFolder
    data = images(tmp_path / 'data')
    sub = data / 'dog' / 'more'; images(sub, classes=('x',), n=2)
    orig = os.scandir
    import dino_course.data as D
    def failing_walk(top, *a, **k):                            # what os.walk reports for a folder it cannot list
        for x in _walk(top, *a, **k): yield x
    _walk = os.walk
    errors = []
    def walk(top, topdown=True, onerror=None, followlinks=False):
        for dirpath, dirs, files in _walk(top, topdown, onerror, followlinks):
            if dirpath.endswith('more'):
                if onerror: onerror(PermissionError(13, 'Permission denied', dirpath))
                dirs[:] = []; continue
            yield dirpath, dirs, files
    import unittest.mock as m
    with m.patch.object(D.os, 'walk', walk), pytest.warns(UserWarning, match='could not read'):
        ds = SafeImageFolder(data)
    assert len(ds.samples) == 12

def test_single_class_data_warns_that_knn_means_nothing(tmp_path, capsys):
    data = images(tmp_path / 'data', classes=('only',), n=12)
    with pytest.warns(UserWarning, match='one class'):
        code, err = run(['train', '--data', data, '--epochs', '1', *TINY, '--out', tmp_path / 'run'], capsys)
    assert code == 0, err

def test_empty_data_folder(tmp_path, capsys):
    (tmp_path / 'empty').mkdir()
    code, err = run(['train', '--data', tmp_path / 'empty', '--epochs', '1', *TINY, '--out', tmp_path / 'run'], capsys)
    assert code == 2; short(err, 'No image files')

def test_data_folder_of_broken_images(tmp_path, capsys):
    (tmp_path / 'bad' / 'a').mkdir(parents=True)
    for i in range(3): (tmp_path / 'bad' / 'a' / f'{i}.jpg').write_bytes(b'not a jpeg')
    code, err = run(['train', '--data', tmp_path / 'bad', '--epochs', '1', *TINY, '--out', tmp_path / 'run'], capsys)
    assert code == 2; short(err, 'can be read')

# ---------------------------------------------------------------- run directories and disks
def test_out_is_a_file(tmp_path, capsys):
    f = tmp_path / 'f'; f.write_text('mine')
    code, err = run(['train', '--epochs', '1', *TINY, '--out', f], capsys)
    assert code == 2; short(err, '--out', 'file'); assert f.read_text() == 'mine'

def test_out_under_a_file(tmp_path, capsys):
    f = tmp_path / 'f'; f.write_text('mine')
    code, err = run(['train', '--epochs', '1', *TINY, '--out', f / 'run'], capsys)
    assert code == 2; short(err, '--out')

def test_out_read_only(tmp_path, capsys):
    if os.geteuid() == 0: pytest.skip("root writes everywhere")
    ro = tmp_path / 'ro'; ro.mkdir(); ro.chmod(0o500)
    try:
        code, err = run(['train', '--epochs', '1', *TINY, '--out', ro / 'run'], capsys)
        assert code == 2; short(err, '--out', 'writ')
    finally: ro.chmod(0o755)

def test_out_not_writable_is_checked_up_front(tmp_path, capsys, monkeypatch):
    "The write probe: a run directory we cannot create a file in is refused before training (also as root, by mocking)."
    import dino_course.train as T
    real = T.check_run_directory
    monkeypatch.setattr(T.os, 'access', lambda p, mode: False)
    code, err = run(['train', '--epochs', '1', *TINY, '--out', tmp_path / 'run'], capsys)
    assert code == 2; short(err, '--out', 'writ')

def test_disk_full_while_training_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    out = tmp_path / 'run'
    assert main(['train', '--epochs', '1', *TINY, '--out', str(out)]) == 0
    before = (out / 'checkpoint.pth').read_bytes(); capsys.readouterr()
    import dino_course.learner as L
    real = L.torch.save
    def full(obj, f, *a, **k): raise OSError(28, 'No space left on device')
    monkeypatch.setattr(L.torch, 'save', full)
    code, err = run(['train', '--epochs', '2', *TINY, '--out', out], capsys)
    assert code == 3; short(err, 'No space left', 'checkpoint')
    assert (out / 'checkpoint.pth').read_bytes() == before
    assert not list(out.glob('.*.tmp'))

def test_two_runs_on_one_out_directory(tmp_path, capsys):
    out = tmp_path / 'run'; out.mkdir()
    holder = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    try:
        (out / '.lock').write_text(json.dumps({'pid': holder.pid, 'host': os.uname().nodename, 'started': time.time()}))
        code, err = run(['train', '--epochs', '1', *TINY, '--out', out], capsys)
        assert code == 2; short(err, str(holder.pid), 'in use')
    finally: holder.kill(); holder.wait()
    code, err = run(['train', '--epochs', '1', *TINY, '--out', out], capsys)     # its holder is gone: a stale lock
    assert code == 0, err
    assert not (out / '.lock').exists()                        # released at the end

# ---------------------------------------------------------------- checkpoints and resume
def test_corrupt_checkpoint(tmp_path, capsys):
    out = tmp_path / 'run'; out.mkdir(); (out / 'checkpoint.pth').write_bytes(b'garbage')
    code, err = run(['train', '--epochs', '1', *TINY, '--out', out], capsys)
    assert code == 2; short(err, 'checkpoint', '--no-resume')
    assert (out / 'checkpoint.pth').read_bytes() == b'garbage'       # kept for the user to look at

def test_resume_with_a_different_configuration(tmp_path, capsys):
    out = tmp_path / 'run'
    assert main(['train', '--epochs', '1', *TINY, '--out', str(out)]) == 0; capsys.readouterr()
    code, err = run(['train', '--epochs', '1', *TINY, '--n-local', '2', '--out', out], capsys)
    assert code == 2; short(err, 'different configuration', 'n_local', '--no-resume')

def test_resume_after_the_data_folder_changed(tmp_path, capsys):
    data = images(tmp_path / 'data'); out = tmp_path / 'run'
    assert main(['train', '--data', str(data), '--epochs', '1', *TINY, '--out', str(out)]) == 0; capsys.readouterr()
    images(data, classes=('bird',))
    code, err = run(['train', '--data', data, '--epochs', '2', *TINY, '--out', out], capsys)
    assert code == 2; short(err, 'bird', '--no-resume')

def test_edited_config_json_is_not_silently_ignored(tmp_path, capsys):
    out = tmp_path / 'run'
    assert main(['train', '--epochs', '1', *TINY, '--out', str(out)]) == 0; capsys.readouterr()
    cfg = json.loads((out / 'config.json').read_text()); cfg['lr'] = 0.5
    (out / 'config.json').write_text(json.dumps(cfg))
    code, err = run(['train', '--epochs', '2', *TINY, '--out', out], capsys)
    assert code == 0 and 'config.json' in err and 'lr' in err, err
    assert json.loads((out / 'config.json').read_text())['lr'] != 0.5          # config.json says what the run uses again
    assert list(out.glob('config.edited-*.json'))                              # the edit is kept

def test_resume_a_finished_run_with_more_epochs(tmp_path, capsys):
    out = tmp_path / 'run'
    assert main(['train', '--epochs', '1', *TINY, '--out', str(out)]) == 0
    assert main(['train', '--epochs', '2', *TINY, '--out', str(out)]) == 0
    assert json.loads((out / 'metrics.json').read_text())['epochs'] == 2

def test_no_resume_keeps_the_old_checkpoint(tmp_path, capsys):
    out = tmp_path / 'run'
    assert main(['train', '--epochs', '1', *TINY, '--out', str(out)]) == 0
    old = (out / 'checkpoint.pth').read_bytes()
    assert main(['train', '--epochs', '1', *TINY, '--no-resume', '--out', str(out)]) == 0
    kept = list(out.glob('checkpoint-*.pth'))
    assert len(kept) == 1 and kept[0].read_bytes() == old

# ---------------------------------------------------------------- divergence
def test_divergence_advice_is_accepted(tmp_path, capsys):
    out, base = tmp_path / 'run', ['train', '--epochs', '2', *TINY, '--no-scale-lr', '--warmup-epochs', '0', '--out', tmp_path / 'run']
    assert run([*base, '--lr', '1e-3', '--stop-at-step', '2'], capsys)[0] == 0            # one good epoch, checkpointed
    good = (out / 'checkpoint.pth').read_bytes()
    code, err = run([*base, '--lr', '1e30', '--allow-changes'], capsys)                  # then a learning rate that explodes
    assert code == 1; short(err, 'diverged', 'last good checkpoint', '--allow-changes')
    assert (out / 'checkpoint.pth').read_bytes() == good                                 # the good checkpoint is kept
    # the advice: the same command with a lower --lr and --allow-changes resumes from it and finishes
    code, err = run([*base, '--lr', '1e-4', '--allow-changes'], capsys)
    assert code == 0, err
    log = (out / 'log.jsonl').read_text()
    assert 'changed' in log and 'lr' in log                   # the change is recorded in the log

def test_allow_changes_does_not_allow_a_different_model(tmp_path, capsys):
    out = tmp_path / 'run'
    assert main(['train', '--epochs', '1', *TINY, '--out', str(out)]) == 0; capsys.readouterr()
    code, err = run(['train', '--epochs', '2', *TINY, '--out-dim', '64', '--allow-changes', '--out', out], capsys)
    assert code == 2; short(err, 'out_dim')

# ---------------------------------------------------------------- signals and checkpoint interval
def _start(out, extra=()):
    return subprocess.Popen(['dino-course', 'train', '--epochs', '50', *TINY, '--steps-per-epoch', '40', *extra, '--out', str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, 'DINO_COURSE_QUIET': '1'})

def _wait_for(path, proc, timeout=120):
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None and time.time() - t0 < timeout, proc.communicate()
        time.sleep(0.2)

def test_sigterm_saves_a_checkpoint_and_resumes(tmp_path):
    out = tmp_path / 'run'
    p = _start(out)
    _wait_for(out / 'config.json', p); time.sleep(3)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert 'SIGTERM' in err and 'Traceback' not in err
    ck = __import__('torch').load(out / 'checkpoint.pth', weights_only=False)
    assert ck['step'] > 0

def test_checkpoint_every_steps_within_an_epoch(tmp_path, capsys):
    out = tmp_path / 'run'
    assert main(['train', '--epochs', '1', *TINY, '--steps-per-epoch', '6', '--checkpoint-every', '2', '--stop-at-step', '5',
                 '--out', str(out)]) in (0, 130)
    import torch
    assert torch.load(out / 'checkpoint.pth', weights_only=False)['step'] >= 4

def test_exit_codes_are_documented(capsys):
    assert main(['--help']) == 0
    out = capsys.readouterr().out
    for code in ('0', '1', '2', '3', '130'): assert f'{code} ' in out or f'{code}:' in out
    assert 'exit codes' in out.lower()
