"(Run before the package had `koleo_weight`; it now does: `dino-course train --koleo-weight W`.) DINO + KoLeo (DINOv2) on the student's global-crop backbone features, as a registered method; args: name lambda [train overrides as k=v]"
import sys, json, torch, torch.nn.functional as F
from dino_course import train as T
lam = float(sys.argv[2])
class DINOKoLeo(T.DINOMethod):
    def __init__(self, *a, **k):
        super().__init__(*a, **k); self._feats = []
        self.student.backbone.register_forward_hook(lambda m, i, o: self._feats.append(o[0] if isinstance(o, tuple) else o))
    def loss(self, crops, epoch, step):
        self._feats.clear()
        loss, stats = super().loss(crops, epoch, step)
        g = self._feats[0].float()                                  # (2b, D): the global crops' features
        kl = 0.
        for x in g.chunk(2):                                        # per view, as DINOv2
            x = F.normalize(x, dim=-1, eps=1e-8)
            d = torch.cdist(x, x) + torch.eye(len(x), device=x.device) * 1e4
            kl = kl - torch.log(d.min(1).values + 1e-8).mean()
        self._feats.clear()
        return loss + lam * kl / 2, {**stats, 'koleo': (kl / 2).detach()}
T.register_method('dino_koleo', DINOKoLeo)
kw = dict(a.split('=', 1) for a in sys.argv[3:])
kw = {k: json.loads(v) for k, v in kw.items()}
T.train(method='dino_koleo', data='shapes', out=f'/tmp/search/{sys.argv[1]}', **{'koleo_weight': 0, **kw})   # the package's own KoLeo off
