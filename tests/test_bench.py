"Tests of dino_course.bench: the ladder and its supervised ceiling (a method on the learner)."
from dataclasses import replace
import pytest
import torch
import dino_course.bench as B
from dino_course.train import validate_config, knn_bank, ConfigError
from test_train import tiny


def test_benchmark_knn_baselines(tmp_path):
    "benchmark_knn: the pixel baseline is the kNN of flattened normalised images; DINO's curve starts at the random backbone."
    from dino_course.evaluate import extract_features, knn_classifier
    cfg = tiny(tmp_path, 'bench', epochs=None, steps_per_epoch=2)
    res = B.benchmark_knn(cfg, minutes=0.02, verbose=False)
    ev = knn_bank(validate_config(replace(cfg, minutes=0.02)))
    tr, ytr = extract_features(torch.nn.Flatten(), ev.train)
    te, yte = extract_features(torch.nn.Flatten(), ev.test)
    assert res['pixels'] == pytest.approx(knn_classifier(tr, ytr, te, yte, k=cfg.knn_k, T=cfg.knn_t))
    curve = res['dino']['knn_curve']
    assert curve[0]['step'] == 0 and curve[0]['knn_top1'] == pytest.approx(res['random_init'])
    assert curve[-1]['step'] > 0 and curve[-1]['images_seen'] == curve[-1]['step'] * cfg.batch_size
    sup = res['supervised']
    assert sup['steps'] > 0 and 0 <= sup['test_accuracy'] <= 100 and sup['knn_curve'][-1]['knn_top1'] == sup['knn_top1']
    assert 'raw pixels' in B.knn_benchmark_table(res)
    with pytest.raises(ConfigError, match='built-in shapes'): B.benchmark_knn(replace(cfg, data='cifar10'), verbose=False)



def test_benchmark_families_compares_methods_on_one_bank(tmp_path):
    "`benchmark_families`: every method's kNN curve on the same bank and budget, the baselines, a table and a plot."
    cfg = tiny(tmp_path, n_local=0, steps_per_epoch=2, epochs=None, queue_size=32, vicreg_dim=16)
    res = B.benchmark_families(cfg, minutes=0.05, methods=('moco', 'byol'), supervised=True, verbose=False)
    assert set(res['runs']) == {'moco', 'byol'} and res['minutes'] == 0.05
    for r in res['runs'].values():
        assert r['knn_curve'][0]['knn_top1'] == r['knn_top1_init'] and r['images_per_second'] > 0 and r['steps'] >= 1
    assert res['runs']['moco']['knn_top1_init'] == res['runs']['byol']['knn_top1_init']     # one bank, one seed: one random init
    table = B.families_table(res)
    assert 'MoCo v2' in table and 'BYOL' in table and 'supervised (ceiling)' in table and 'random init' in table
    axs = B.plot_families(res)
    assert len(axs[0].lines) == 3 + 3                                              # two methods + supervised, three reference lines
    with pytest.raises(ConfigError, match='unknown swav'): B.benchmark_families(cfg, minutes=0.05, methods=('swav',))
