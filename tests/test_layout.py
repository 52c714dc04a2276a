"""The package's layout after issue 10's split (learner, train, dino; data, vit, segment): old import paths still give
the same objects, modules import only modules of earlier lessons (import order = lesson order), modules stay short,
and the DINO step is written once."""
import ast, importlib, inspect, re
from pathlib import Path
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / 'dino_course'

MOVED = {   # old module -> (new module, names that moved there)
    'learner': {'checkpoint': ['ConfigError', 'ResumeError', 'NonFiniteLossError', 'TrainingInterrupted', 'CHECKPOINT', 'atomic_save',
                               'write_text', 'rng_state', 'set_rng_state', 'load_checkpoint', 'config_differences'],
                'distributed': ['DistEnv', 'init_distributed', 'barrier', 'wrap_ddp'],
                'callbacks': ['STOP_REASONS', 'Callback', 'diverged', 'Checkpoint', 'CheckpointEvery', 'NonFiniteGuard', 'log_line',
                              'Log', 'save_figure', 'plot_history', 'Figures']},
    'train': {'course_models': ['ARCH_PRESETS', 'OUR_ARCHS', 'backbone_from_config', 'export_course_model', 'load_course_model',
                                '_models_dir'],
              'batches': ['KNOWN_DATASETS', 'SHAPES', 'AUGMENT', 'step_seed', 'GlobalBatchSampler', 'Views', 'ShapesStream',
                          'DatasetBatches', 'knn_bank', 'data_classes', 'shapes_jaccard'],
              'rundir': ['run_directory', 'check_run_directory', 'RunLock', 'RecordChanges'],
              'learner': ['ConfigError', 'ResumeError', 'atomic_save', 'load_checkpoint', 'CHECKPOINT', 'DistEnv']},
    'dino': {'learner': ['cosine_scheduler', 'get_params_groups', 'set_lr_wd', 'clip_gradients'],
             'dino_loss': ['entropy', 'kl_divergence', 'cross_view_mask', 'dino_stats', 'teacher_temp_schedule', 'DINOLoss',
                           'sinkhorn_knopp', 'koleo_loss']},
    # issue 10's split of data, vit and segment
    'data': {'download': ['ARCHIVES', 'Archive', 'ChecksumError', 'DatasetNotFoundError', 'DownloadError', 'download_and_extract',
                          'download_dataset', 'download_url', 'extract_archive', 'fetch_command', 'file_hash', 'get_data_root', '_repo_root'],
             'real_datasets': ['REAL_LOADERS', 'LocalCIFAR10', 'LocalSTL10', 'NoisyImagenette', '_check_split'],
             'image_folder': ['IMG_EXTENSIONS', 'SafeImageFolder']},
    'vit': {'weights': ['CheckpointError', 'CheckpointMismatchError', 'LoadReport', 'describe_state_dict', 'load_pretrained']},
    'segment': {'pretrained': ['DINO_RELEASE', 'PRETRAINED', 'LinearClassifier', 'Pretrained', 'load_backbone', 'load_pretrained',
                               'pretrained_model', 'pretrained_path', 'weights_dir']},
}

@pytest.mark.parametrize('old', sorted(MOVED))
def test_old_import_paths_give_the_same_objects(old):
    o = importlib.import_module(f'dino_course.{old}')
    for new, names in MOVED[old].items():
        n = importlib.import_module(f'dino_course.{new}')
        for name in names:
            assert getattr(o, name) is getattr(n, name), f"dino_course.{old}.{name} is not dino_course.{new}.{name}"
            if not name.startswith('_'): assert name in o.__all__, f"{name} missing from dino_course.{old}.__all__"

def lesson_of(py: Path) -> str | None:
    "The notebook a module is exported from (nbdev's header line), e.g. '05b_train'."
    m = re.search(r'File to edit: \.\./nbs/(\S+)\.ipynb', py.read_text()[:500])
    return m.group(1) if m else None

def top_level_imports(py: Path) -> set[str]:
    "dino_course modules a module imports when it is imported (module level; not inside functions or `if TYPE_CHECKING`)."
    found = set()
    for node in ast.parse(py.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ''
            if node.level == 1: found.add(mod.split('.')[0] if mod else '')
            elif mod.startswith('dino_course.'): found.add(mod.split('.')[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split('.')[1] for a in node.names if a.name.startswith('dino_course.')}
    return found - {''}

def test_modules_import_only_earlier_lessons():
    "Import order = lesson order (nbdev_test's sorted filenames): no module imports a later lesson's module."
    lessons = {py.stem: lesson_of(py) for py in PKG.glob('*.py') if lesson_of(py)}
    assert {'checkpoint', 'distributed', 'course_models', 'callbacks', 'dino_loss', 'batches', 'rundir'} <= set(lessons)
    bad = [f"{m} ({lessons[m]}) imports {i} ({lessons[i]})" for m in lessons for i in top_level_imports(PKG / f'{m}.py')
           if i in lessons and lessons[i] >= lessons[m]]
    assert not bad, bad

def test_the_scan_sees_imports():
    "The import scan is not vacuous: train imports learner and dino, learner its appendices."
    assert {'learner', 'dino', 'batches', 'rundir', 'course_models'} <= top_level_imports(PKG / 'train.py')
    assert {'checkpoint', 'distributed', 'callbacks'} <= top_level_imports(PKG / 'learner.py')
    order = [lesson_of(PKG / f'{m}.py') for m in ('download', 'data', 'weights', 'vit', 'pretrained', 'segment')]
    assert order == sorted(order), order             # the appendices come before the lessons that import them

@pytest.mark.parametrize('mod', ['learner', 'train', 'dino', 'checkpoint', 'distributed', 'callbacks', 'course_models', 'batches',
                                 'rundir', 'dino_loss'])
def test_modules_are_short(mod):
    n = len((PKG / f'{mod}.py').read_text().splitlines())
    assert n <= 410, f"dino_course/{mod}.py has {n} lines; split it by concept (issue 10)"

def test_trainer_is_short():
    from dino_course.learner import Trainer
    n = len(inspect.getsource(Trainer).splitlines())
    assert n <= 150, n

def test_dino_step_and_the_method_share_one_forward():
    "`DINOMethod.training_step` (the Trainer's) and `dino_step` (lesson 05's Algorithm 1) compute the same loss."
    from dataclasses import replace
    from dino_course.train import TrainConfig
    from dino_course.dino import DINOMethod, dino_forward, DINOLoss, dino_step
    from dino_course.vit import build_backbone
    cfg = replace(TrainConfig(), koleo_weight=0., out_dim=32, hidden_dim=16, bottleneck_dim=8, n_local=1, local_size=16)
    torch.manual_seed(0)
    m = DINOMethod(cfg, build_backbone('vit_conv', img_size=32, patch_size=4), epochs=2, niter_per_ep=5)
    views = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32), torch.randn(4, 3, 16, 16)]
    twin = DINOLoss(32, 3, cfg.warmup_teacher_temp, cfg.teacher_temp, 0, 2, cfg.student_temp, cfg.center_momentum,
                    centering=cfg.centering, sk_iterations=cfg.sk_iterations)
    want = dino_forward(m.student, m.teacher, twin, views, epoch=0.2)
    got, stats = m.training_step(views, step=1)
    assert torch.equal(got, want) and set(stats) >= {'teacher_entropy', 'kl'}
    src = inspect.getsource(dino_step) + inspect.getsource(DINOMethod.training_step)
    assert src.count('dino_forward(') == 2 and 'backward_step(' in inspect.getsource(dino_step)
