"""What the prototype scripts of this folder share: their `field=value` arguments and the run they make.
`python SCRIPT.py ...` puts this folder first on sys.path, so each script imports it as `from _common import run`."""
import json
import dino_course.train as T

def value(v: str):
    "A `field=value` argument's value: a number or true/false as JSON reads it, else the word itself (e.g. optimizer=sgd)."
    try: return json.loads(v)
    except ValueError: return v

def run(out: str, args, epochs: int, *label) -> dict:
    """Train BYOL on the built-in shapes into `out` for `epochs` x 100 steps on one thread, kNN every 100 steps, with the
    `field=value` strings of `args` as TrainConfig fields; print `out`, `label` and the kNN curve."""
    cfg = dict(method='byol', data='shapes', epochs=epochs, eval_every=1, threads=1, figures=False, out=out)
    cfg.update({k: value(v) for k, v in (a.split('=', 1) for a in args)})
    m = T.train(**cfg)
    print(out, *label, list(args), [round(e['knn_top1'], 1) for e in m['knn_curve']])
    return m
