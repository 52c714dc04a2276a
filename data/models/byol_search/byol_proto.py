"""Prototype: BYOL with the predictor at SCALE x the learning rate (Tian et al. 2021; SimSiam's fixed predictor lr).
    python byol_proto.py SCALE OUT [field=value ...]   (500 steps, one thread, as the search in byol_search_shapes.json)
The package has no per-module learning rate, so this patches its optimiser and schedule setter."""
import sys, torch
import dino_course.train as T, dino_course.learner as L
from _common import run
scale = float(sys.argv[1]); out = sys.argv[2]
def groups(model):
    g = L.get_params_groups(model)
    pred = {id(p) for p in model.predictor.parameters()} if hasattr(model, 'predictor') else set()
    res = []
    for grp in g:
        a = [p for p in grp['params'] if id(p) not in pred]; b = [p for p in grp['params'] if id(p) in pred]
        d = grp.get('weight_decay', None) != 0
        res.append({**grp, 'params': a, 'decay': d}); res.append({**grp, 'params': b, 'lr_scale': scale, 'decay': d})
    return res
def make_optimizer(cfg, model):
    return torch.optim.AdamW(groups(model))
T.make_optimizer = make_optimizer
def set_lr_wd(opt, lr, wd=None):
    for g in opt.param_groups:
        g['lr'] = lr * g.get('lr_scale', 1.)
        if wd is not None and g['decay']: g['weight_decay'] = wd
L.set_lr_wd = set_lr_wd
run(out, sys.argv[3:], 5, f'predictor lr x{scale}')
