"Tests of dino_course.ssl: NT-Xent and SimCLR on the learner."
import pytest
import torch
from dino_course.ssl import nt_xent
from dino_course.train import train, load_checkpoint, CHECKPOINT
from test_train import tiny


def test_nt_xent_matches_lightly():
    "SimCLR's NT-Xent equals lightly's NTXentLoss (no memory bank) on random projections."
    lightly_loss = pytest.importorskip('lightly.loss')
    torch.manual_seed(0)
    z1, z2 = torch.randn(16, 8), torch.randn(16, 8)
    ref = lightly_loss.NTXentLoss(temperature=0.2)(z1, z2)
    torch.testing.assert_close(nt_xent(z1, z2, 0.2), ref, atol=1e-6, rtol=1e-6)


def test_simclr_method_trains(tmp_path):
    "`--method simclr` runs through the same trainer (checkpoint, kNN, metrics)."
    m = train(tiny(tmp_path, method='simclr', n_local=0), verbose=False)
    assert m['method'] == 'simclr' and m['steps'] == 6 and m['knn_top1'] is not None
    assert set(load_checkpoint(tmp_path / 'run' / CHECKPOINT)) >= {'student', 'optimizer'}

