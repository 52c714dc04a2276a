"The report's presets and `dino-course reproduce` (lesson 08)."
import json
import pytest
import torch
from dino_course.cli import main
from dino_course.train import TrainConfig, validate_config, train, backbone_from_config
from dino_course.experiments import PRESETS, REPORT, preset_command, run_regimes, dino_backbone, shapes_data
from test_data import make_imagenette, make_cifar10     # the real on-disk layouts get_dataset reads

def test_presets_are_the_reports_values_and_real_options():
    final, mid = PRESETS['report-final'], PRESETS['report-midterm']
    assert (final['out_dim'], final['n_local'], final['epochs'], final['arch']) == (8192, 2, 160, 'resnet18')
    assert (mid['out_dim'], mid['n_local'], mid['epochs']) == (1024, 4, 100)
    for p in (final, mid):
        assert (p['momentum_teacher'], p['momentum_teacher_end'], p['teacher_temp'], p['student_temp'], p['center_momentum']) == (0.995, 0.995, 0.04, 0.1, 0.9)
        assert (p['hidden_dim'], p['bottleneck_dim'], p['nlayers'], p['optimizer'], p['lr'], p['weight_decay']) == (512, 1024, 3, 'adam', 2.5e-4, 0.4)
        assert p['centering'] == 'centering' and p['koleo_weight'] == 0
    assert PRESETS['report-final-vit']['epochs'] == 200
    for name, p in PRESETS.items():
        cfg = validate_config(TrainConfig(**p))
        assert all(getattr(cfg, k) == v for k, v in p.items()), name
    assert '--optimizer adam' in preset_command('report-final') and '--out-dim 8192' in preset_command('report-final')

def test_adam_is_l2_decay():
    cfg = validate_config(TrainConfig(**PRESETS['report-final']))
    from dino_course.train import make_optimizer
    assert type(make_optimizer(cfg, torch.nn.Linear(2, 2))) is torch.optim.Adam

def test_reproduce_help_lists_the_targets(capsys):
    assert main(['reproduce', '--help']) == 0
    out = capsys.readouterr().out
    assert all(t in out for t in ('table1', 'table2', 'cifar10')) and '--weights' in out and '--dino' in out
    assert main(['--help']) == 0 and 'reproduce' in capsys.readouterr().out     # the command list formats its help too

def test_shapes_split_is_recorded_and_balanced():
    (x, y), val, split = shapes_data(fraction=0.2, seed=0)
    assert x.shape[1:] == (3, 32, 32) and x.dtype == torch.uint8 and len(y) == split['n'] == len(split['indices'])
    assert torch.bincount(y, minlength=10).tolist() == split['per_class']
    assert shapes_data(fraction=0.2, seed=0)[2]['indices'] == split['indices']

@pytest.fixture(scope='module')
def fake_imagenette(tmp_path_factory):
    "A fake Imagenette (5 train / 2 val images per class), a 1-epoch DINO run on it and 'ImageNet' weights (timm's tiny test ResNet)."
    root = tmp_path_factory.mktemp('data')
    make_imagenette(root, folder='imagenette2-320', per_class=(5, 2))
    dino = root / 'dino'
    train(TrainConfig(data='imagenette', data_root=str(root), arch='test_resnet', global_size=32, n_local=0, batch_size=10,
                      epochs=1, num_workers=0, out=str(dino), figures=False, out_dim=32, hidden_dim=32, bottleneck_dim=16), verbose=False)
    weights = root / 'test_resnet.pth'
    torch.save(backbone_from_config(TrainConfig(arch='test_resnet', global_size=32)).state_dict(), weights)
    return root, dino, weights

def test_reproduce_table1_on_a_fake_imagenette(fake_imagenette, tmp_path, capsys):
    root, dino, weights = fake_imagenette
    out = tmp_path / 'out'
    rc = main(['reproduce', 'table1', '--data', 'imagenette', '--data-root', str(root), '--weights', str(weights), '--dino', str(dino),
               '--out', str(out), '--epochs', '2', '--batch-size', '5', '--image-size', '32', '--num-workers', '0'])
    printed = capsys.readouterr().out
    assert rc == 0
    res = json.loads((out / 'results.json').read_text())
    assert list(res['regimes']) == ['scratch', 'pretrained', 'dino_linear', 'dino_finetune'] and res['arch'] == 'test_resnet'
    assert res['split']['per_class'] == [1] * 10 and len(res['split']['indices']) == 10
    for r, m in res['regimes'].items():
        assert 0 <= m['val_acc'] <= 100 and len(m['history']) == 2 and len(m['step_log']) == 4, r
        assert (out / r / 'checkpoint.pth').is_file()
    assert (out / 'fig7.png').stat().st_size > 1000
    assert '70.06' in printed and '96.31' in printed and '82.29' in printed and '82.17' in printed
    # the DINO regimes start from the run's teacher backbone
    bb, cfg = dino_backbone(dino, 32)
    assert cfg['arch'] == 'test_resnet'
    saved = torch.load(dino / 'backbone.pth', weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in bb.state_dict().items())

def test_missing_data_weights_or_run_are_one_line_exit_2(fake_imagenette, tmp_path, capsys):
    root, dino, weights = fake_imagenette
    base = ['reproduce', 'table1', '--data', 'imagenette', '--epochs', '1', '--image-size', '32', '--num-workers', '0', '--out', str(tmp_path)]
    cases = [(['--data-root', str(root), '--dino', str(dino), '--weights', str(tmp_path / 'nope.pth')], 'not found at'),
             (['--data-root', str(root), '--dino', str(dino)], 'ImageNet weights not given'),
             (['--data-root', str(root), '--weights', str(weights), '--dino', str(tmp_path)], 'no DINO run there'),
             (['--data-root', str(tmp_path / 'empty'), '--weights', str(weights), '--dino', str(dino)], 'download imagenette')]
    for extra, words in cases:
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert words in err and err.count('\n') == 1, err

def test_missing_imagenet_weights_say_what_to_download(tmp_path, capsys):
    from dino_course.experiments import imagenet_backbone
    from dino_course.learner import ConfigError
    with pytest.raises(ConfigError, match='curl -L -o resnet18-f37072fd.pth https://download.pytorch.org/models/resnet18-f37072fd.pth'):
        imagenet_backbone(tmp_path / 'x.pth', {'arch': 'resnet18'}, 224)
    assert main(['reproduce', 'table1', '--data', 'shapes', '--regimes', 'scratch,nope']) == 2

def test_cifar10_target_needs_a_dino_backbone(tmp_path, capsys):
    assert main(['reproduce', 'cifar10', '--data-root', str(tmp_path)]) == 2
    assert 'dino_deitsmall16_pretrain.pth' in capsys.readouterr().err

def test_report_numbers():
    assert REPORT['table1'] == {'scratch': 70.06, 'pretrained': 96.31, 'dino_linear': 82.29, 'dino_finetune': 82.17}
    assert REPORT['table2'] == {'scratch': 52.35, 'pretrained': 98.34, 'dino_linear': 66.24, 'dino_finetune': 72.87}
    assert REPORT['cifar10']['dino_mlp'] == 93.0

def test_reproduce_cifar10_on_a_fake_cifar10(fake_imagenette, tmp_path, capsys):
    _, dino, _ = fake_imagenette
    make_cifar10(tmp_path, n=4)                       # 20 train, 4 test images
    out = tmp_path / 'out'
    assert main(['reproduce', 'cifar10', '--data-root', str(tmp_path), '--dino', str(dino), '--out', str(out), '--epochs', '1',
                 '--batch-size', '10', '--image-size', '32', '--num-workers', '0']) == 0
    res = json.loads((out / 'results.json').read_text())
    assert list(res['regimes']) == ['dino_mlp', 'dino_finetune'] and res['fraction'] == 1.0 and res['split']['n'] == 20
    assert '93.00' in capsys.readouterr().out
