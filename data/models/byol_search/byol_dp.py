"""Prototype: BYOL with DirectPred's predictor (Tian, Chen & Ganguli 2021): a linear predictor, not trained, set at every
step from F, an EMA (rate rho) of the correlation matrix of the online projections: F = U diag(s) U^T,
W = U diag(sqrt(s / max s) + eps) U^T (eps lifts the weak directions).
    python byol_dp.py OUT [eps=0.1] [rho=0.3] [field=value ...]   (700 steps, one thread, as `runs_700` in byol_search_shapes.json)"""
import sys, torch
from torch import nn
import dino_course.byol as B
from _common import run
out, mine = sys.argv[1], {'eps': 0.1, 'rho': 0.3}
fields = [a for a in sys.argv[2:] if a.split('=')[0] not in mine]
mine.update((k, float(v)) for k, v in (a.split('=', 1) for a in sys.argv[2:] if a.split('=')[0] in mine))
eps, rho = mine['eps'], mine['rho']
class DirectPred(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.register_buffer('F', torch.zeros(d, d)); self.register_buffer('W', torch.eye(d))
    def forward(self, z):
        if self.training:
            with torch.no_grad():
                zz = z.detach().float()
                self.F.mul_(rho).add_(zz.T @ zz / len(zz), alpha=1 - rho)
                s, U = torch.linalg.eigh(self.F)
                s = s.clamp(min=0)
                self.W.copy_(U @ torch.diag((s / s.max()).sqrt() + eps) @ U.T)
        return z @ self.W.T
init = B.BYOLMethod.__init__
def dp_init(self, cfg, backbone, epochs, niter):
    init(self, cfg, backbone, epochs, niter)
    self.student.predictor = DirectPred(cfg.bottleneck_dim)
B.BYOLMethod.__init__ = dp_init
run(out, fields, 7, f'DirectPred eps {eps} rho {rho}')
