"Tests of the dino-course console script (dino_course.cli)."
import json, os, subprocess, sys
import pytest
from dino_course.cli import main, build_parser, config_from_args
from dino_course.train import TrainConfig

TINY = ['--batch-size', '8', '--steps-per-epoch', '2', '--image-size', '16', '--global-size', '16', '--local-size', '8',
        '--n-local', '2', '--patch-size', '4', '--backbone-kwargs', '{"depth": 1, "embed_dim": 16, "num_heads": 2}',
        '--out-dim', '32', '--hidden-dim', '16', '--bottleneck-dim', '8', '--knn-train', '60', '--knn-test', '40', '--threads', '1']

def test_console_script_trains_and_writes_metrics(tmp_path):
    "The installed `dino-course` command: a 1-epoch run exits 0, says where the run is, writes metrics.json and figures."
    out = tmp_path / 'run'
    r = subprocess.run(['dino-course', 'train', '--data', 'shapes', '--epochs', '1', *TINY, '--out', str(out)],
                       capture_output=True, text=True, timeout=300, env={**os.environ, 'DINO_COURSE_QUIET': '1'})
    assert r.returncode == 0, r.stderr
    assert str(out) in r.stdout
    m = json.loads((out / 'metrics.json').read_text())
    assert {'knn_top1', 'epochs', 'images_seen', 'seconds', 'images_per_second', 'config'} <= m.keys()
    assert m['epochs'] == 1 and m['images_seen'] == 16 and 0 <= m['knn_top1'] <= 100
    assert {'log.jsonl', 'checkpoint.pth', 'config.json', 'loss.png', 'knn.png', 'attention.png', 'backbone.pth'} <= {p.name for p in out.iterdir()}

def test_help():
    r = subprocess.run(['dino-course', '--help'], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and 'train' in r.stdout and 'bench' in r.stdout

def test_flags_map_to_config():
    args = build_parser().parse_args(['train', '--arch', 'resnet18', '--n-local', '6', '--no-resume', '--local-scale', '0.1', '0.3',
                                      '--backbone-kwargs', '{"drop_rate": 0.1}', '--minutes', '2.5'])
    cfg = config_from_args(args)
    assert (cfg.arch, cfg.n_local, cfg.resume, cfg.local_scale, cfg.backbone_kwargs, cfg.minutes) == \
           ('resnet18', 6, False, (0.1, 0.3), {'drop_rate': 0.1}, 2.5)
    assert cfg.lr == TrainConfig().lr                     # flags not given keep the config's defaults

@pytest.mark.parametrize('args, words', [
    (['train', '--epohcs', '3'], 'unrecognized arguments: --epohcs'),
    (['train', '--batch-size', 'many'], "invalid int value: 'many'"),
    (['train', '--arch', 'resnet_19'], '--arch'),
    (['train', '--data', '/no/such/folder'], '--data'),
    (['train', '--lr', '-1'], '--lr'),
    (['train', '--teacher-temp', 'nan'], '--teacher-temp'),
    (['train', '--global-scale', '0.9', '0.2'], '--global-scale'),
    (['train', '--backbone-kwargs', '{depth: 2}'], 'not valid JSON'),
    (['train', '--optimizer', 'lamb'], "invalid choice: 'lamb'"),
    (['bench', '--device', 'gpu7'], '--device'),
])
def test_bad_usage_is_one_line_and_exit_2(args, words, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err and 'Traceback' not in err, err

def test_mismatched_run_directory_is_exit_2(tmp_path, capsys):
    out = str(tmp_path / 'run')
    assert main(['train', '--epochs', '1', *TINY, '--no-figures', '--out', out]) == 0
    capsys.readouterr()
    assert main(['train', '--epochs', '1', *TINY, '--out-dim', '64', '--out', out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'out_dim: 32 -> 64' in err[0] and '--no-resume' in err[0]

def test_bench_prints_images_per_second(capsys):
    assert main(['bench', *TINY, '--steps', '1', '--warmup', '1']) == 0
    assert 'images/s' in capsys.readouterr().out

def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(tmp_path):
    import signal, time
    out = tmp_path / 'run'
    p = subprocess.Popen(['dino-course', 'train', '--epochs', '1000', *TINY, '--no-figures', '--out', str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, 'DINO_COURSE_QUIET': '1'})
    deadline = time.time() + 240
    while not (out / 'checkpoint.pth').exists() and time.time() < deadline and p.poll() is None: time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 130, stderr
    assert 'Re-run the same command to resume' in stderr and 'Traceback' not in stderr
    ck = __import__('dino_course.train', fromlist=['load_checkpoint']).load_checkpoint(out / 'checkpoint.pth')
    assert ck['step'] >= 2 and ck['config']['epochs'] == 1000

def test_bench_knn_writes_the_benchmark(tmp_path, capsys):
    "`dino-course bench --knn`: the ladder (DINO, SimCLR and the three baselines), printed and saved as knn_benchmark.json."
    out = tmp_path / 'bench'
    assert main(['bench', '--knn', '--minutes', '0.02', *TINY, '--no-figures', '--out', str(out)]) == 0
    text = capsys.readouterr().out
    assert all(s in text for s in ('raw pixels', 'random init', 'supervised (ceiling)', 'DINO (final / best)'))
    res = json.loads((out / 'knn_benchmark.json').read_text())
    assert {'pixels', 'random_init', 'dino', 'simclr', 'supervised', 'config'} <= res.keys()
    assert 'SimCLR' in text and 'after 0.02 minutes' in text
    assert (out / 'dino' / 'metrics.json').exists() and (out / 'simclr' / 'metrics.json').exists()   # --out keeps the runs
    assert res['dino']['jaccard'] is not None and res['dino']['jaccard_init'] is not None

def test_removed_rotation_flag_is_a_usage_error(capsys):
    assert main(['train', '--rotation', '30']) == 2
    assert 'unrecognized arguments: --rotation' in capsys.readouterr().err


def test_registered_command_is_parsed_and_run(capsys):
    "A later lesson's command: listed in --help, its flags parsed, its exit code returned, ConfigError -> exit 2."
    from dino_course import cli
    from dino_course.train import ConfigError
    seen = {}
    def add(p): p.add_argument('--n', type=int, default=1)
    def run(args):
        if args.n < 0: raise ConfigError('--n must be >= 0')
        seen['n'] = args.n; return 3
    cli.register_command('_probe', 'a test command', add, run)
    try:
        assert cli.main(['--help']) == 0 and '_probe' in capsys.readouterr().out
        assert cli.main(['_probe', '--n', '5']) == 3 and seen == {'n': 5}
        assert cli.main(['_probe', '--n', '-1']) == 2
        assert '--n must be >= 0' in capsys.readouterr().err
    finally: cli.COMMANDS.pop('_probe')
