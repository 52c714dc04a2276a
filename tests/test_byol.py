"Tests of dino_course.byol: the loss against lightly's, stop-gradient, the EMA target and its schedule, resume, the ablations, the preset, the CLI."
import json, os, shlex, subprocess
from types import SimpleNamespace
import pytest
import torch
import torch.nn.functional as F
from dino_course.byol import BYOLMethod, byol_loss, output_std, BYOL_STL10, preset_command
from dino_course.ssl import momentum_at
from dino_course.vit import VisionTransformer
from dino_course.train import train, load_checkpoint, CHECKPOINT, TrainConfig, validate_config, ConfigError
from test_train import tiny, assert_same
from test_ssl import TINY_FLAGS


def test_byol_loss_matches_lightly():
    "2 - 2 cos(p, z) = 2 + 2 x lightly's NegativeCosineSimilarity, and = the squared distance of the l2-normalised vectors."
    lightly_loss = pytest.importorskip('lightly.loss')
    torch.manual_seed(0)
    p, z = torch.randn(16, 8), torch.randn(16, 8)
    torch.testing.assert_close(byol_loss(p, z), 2 + 2 * lightly_loss.NegativeCosineSimilarity()(p, z), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(byol_loss(p, z), ((F.normalize(p, dim=1) - F.normalize(z, dim=1)) ** 2).sum(1).mean(), atol=1e-6, rtol=1e-6)


def test_stop_gradient():
    p, z = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    byol_loss(p, z).backward()
    assert p.grad is not None and z.grad is None
    byol_loss(p, z, stop_gradient=False).backward()
    assert z.grad is not None


def test_output_std_tells_spread_from_collapse():
    torch.manual_seed(0)
    assert 0.9 < output_std(torch.randn(4096, 32)).item() < 1.1
    assert output_std(torch.ones(64, 32) + 1e-4 * torch.randn(64, 32)).item() < 0.01


def _byol(**kw):
    cfg = SimpleNamespace(**{**dict(hidden_dim=16, bottleneck_dim=8, byol_tau=0.9, byol_tau_end=1.0, byol_predictor=True,
                                    byol_stop_gradient=True), **kw})
    torch.manual_seed(0)
    return BYOLMethod(cfg, VisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2), epochs=2, niter_per_ep=5)


def test_byol_step_is_the_symmetrised_loss_and_the_target_is_an_ema():
    m = _byol()
    x1, x2 = torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)
    loss, stats = m.training_step([x1, x2], 4)
    with torch.no_grad():
        z, p = m.student([x1, x2]); t1, t2 = m.target([x1, x2]).chunk(2); p1, p2 = p.chunk(2)
    torch.testing.assert_close(loss, byol_loss(p1, t2) + byol_loss(p2, t1), atol=1e-6, rtol=1e-6)
    opt = torch.optim.SGD(m.student.parameters(), lr=0.5)
    opt.zero_grad(); loss.backward()
    assert all(q.grad is None for q in m.target.parameters())
    assert all(q.grad is not None for q in m.student.predictor.parameters())
    opt.step()
    before = [q.clone() for q in m.target.parameters()]
    m.after_step(4)
    tau = momentum_at(4, 10, 0.9, 1.0)
    assert m.tau(4) == tau and m.tau(0) == 0.9 and m.tau(10) == 1.0
    for b, t, o in zip(before, m.target.parameters(), m.student.encoder.parameters()):
        torch.testing.assert_close(t, tau * b + (1 - tau) * o, atol=1e-6, rtol=1e-6)
    assert m.eval_backbone() is m.student.encoder.backbone


def test_cpu_default_holds_tau_at_099():
    "The CPU default (lesson 04's search): the target's tau is 0.99 from the first step to the last, not a cosine to 1."
    cfg = TrainConfig(method='byol')
    assert (cfg.byol_tau, cfg.byol_tau_end) == (0.99, 0.99)
    m = _byol(byol_tau=cfg.byol_tau, byol_tau_end=cfg.byol_tau_end)
    assert {m.tau(k) for k in range(11)} == {0.99}
    assert BYOL_STL10['byol_tau'] == 0.996 and BYOL_STL10['byol_tau_end'] == 1.0     # the report's recipe keeps BYOL's schedule


def test_ablation_switches():
    "--no-byol-predictor: the predictor is the identity; --no-byol-stop-gradient: the targets are the online projections, with gradient."
    assert isinstance(_byol(byol_predictor=False).student.predictor, torch.nn.Identity)
    m = _byol(byol_stop_gradient=False)
    x = [torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)]
    loss, _ = m.training_step(x, 0)
    z, p = m.student(x); p1, p2 = p.chunk(2); z1, z2 = z.chunk(2)
    torch.testing.assert_close(loss, byol_loss(p1, z2, False) + byol_loss(p2, z1, False), atol=1e-6, rtol=1e-6)


def test_resume_restores_the_target(tmp_path):
    "A BYOL run stopped at step 2 and resumed ends with the bits of an uninterrupted one, the target network included."
    kw = dict(method='byol', n_local=0)
    train(tiny(tmp_path, 'full', **kw), verbose=False)
    train(tiny(tmp_path, 'cut', stop_at_step=2, **kw), verbose=False)
    assert {'student', 'target'} <= set(load_checkpoint(tmp_path / 'cut' / CHECKPOINT))
    assert train(tiny(tmp_path, 'cut', **kw), verbose=False)['steps'] == 6
    full, cut = (load_checkpoint(tmp_path / d / CHECKPOINT) for d in ('full', 'cut'))
    flat = lambda ck: {f'{p}.{k}': v for p in ('student', 'target') for k, v in ck[p].items()}
    assert_same(flat(full), flat(cut))


def test_preset_is_the_reports_recipe_and_its_command_parses():
    "BYOL_STL10: ResNet-18, projector/predictor 128-128, SGD lr 0.03 momentum 0.9 wd 4e-4, 15 epochs of STL-10; its command parses back to it."
    from dino_course.cli import build_parser, config_from_args
    cfg = validate_config(TrainConfig(**BYOL_STL10))
    assert (cfg.method, cfg.data, cfg.arch, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.epochs) == ('byol', 'stl10', 'resnet18', 'sgd', 0.03, 4e-4, 15)
    assert (cfg.hidden_dim, cfg.bottleneck_dim, cfg.scale_lr) == (128, 128, False)
    cmd = preset_command(BYOL_STL10)
    args = shlex.split(cmd)
    assert args[:2] == ['dino-course', 'train']
    parsed = config_from_args(build_parser('byol').parse_args(args[1:]))
    assert parsed == cfg


def test_bad_tau_is_a_config_error():
    with pytest.raises(ConfigError, match='--byol-tau'): validate_config(TrainConfig(method='byol', byol_tau=2))


def test_cli_trains_byol(tmp_path):
    out = tmp_path / 'byol'
    r = subprocess.run(['dino-course', 'train', '--method', 'byol', '--data', 'shapes', '--stop-at-step', '2', *TINY_FLAGS, '--out', str(out)],
                       capture_output=True, text=True, timeout=300, env={**os.environ, 'DINO_COURSE_QUIET': '1'})
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((out / 'metrics.json').read_text())
    assert m['config']['method'] == 'byol' and m['steps'] == 2 and m['knn_top1'] is not None
    h = subprocess.run(['dino-course', 'train', '--method', 'byol', '--help'], capture_output=True, text=True, timeout=120).stdout
    assert '--byol-tau' in h and '--no-byol-predictor' in h and '--queue-size' not in h
