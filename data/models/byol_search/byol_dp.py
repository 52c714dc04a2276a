"""Prototype: BYOL with DirectPred's predictor (Tian, Chen & Ganguli 2021): a linear predictor, not trained, set at every
step from F, an EMA (rate rho) of the correlation matrix of the online projections: F = U diag(s) U^T,
W = U diag(sqrt(s / max s) + eps) U^T (eps lifts the weak directions).
    python byol_dp.py OUT [eps=0.1] [rho=0.3] [field=value ...]   (700 steps, one thread, as `runs_700` in byol_search_shapes.json)"""
import json, sys, torch
from torch import nn
import dino_course.train as T, dino_course.byol as B
out = sys.argv[1]; extra = dict(a.split('=') for a in sys.argv[2:])
eps, rho = float(extra.pop('eps', 0.1)), float(extra.pop('rho', 0.3))
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
cfg = dict(method='byol', data='shapes', epochs=7, eval_every=1, threads=1, figures=False, out=out)
def value(v: str):
    try: return json.loads(v)          # numbers, true/false
    except ValueError: return v        # words (e.g. optimizer=sgd)
cfg.update({k: value(v) for k, v in extra.items()})
m = T.train(**cfg)
print(out, extra, eps, rho, [round(e['knn_top1'], 1) for e in m['knn_curve']])
