"Fine-tuning, probes and label fractions (lesson 07)."
import numpy as np
import pytest
import torch
from dino_course.data import make_shapes
from dino_course.learner import ConfigError
from dino_course.train import TrainConfig, backbone_from_config
from dino_course.finetune import (label_split, BlockFeatures, Classifier, FineTuneConfig, LINEAR_EVAL, param_groups, finetune,
                                  LabelledBatches, image_transforms)

def shapes(n, seed):
    im, lab, _ = make_shapes(n, 32, seed=seed)
    return torch.from_numpy(im).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(lab)

def tiny_backbone():
    return backbone_from_config(TrainConfig(arch='vit_conv', backbone_kwargs={'embed_dim': 32, 'num_heads': 2, 'stem_widths': [8, 16, 32]}))

def test_label_split_is_class_balanced_and_reproducible():
    labels = np.repeat(np.arange(5), [10, 20, 30, 40, 50])
    s = label_split(labels, 0.2, seed=3)
    assert s['per_class'] == [2, 4, 6, 8, 10] and s['n'] == 30 and s['seed'] == 3 and s['fraction'] == 0.2
    assert np.bincount(labels[s['indices']]).tolist() == s['per_class']
    assert label_split(labels, 0.2, seed=3)['indices'] == s['indices']
    assert label_split(labels, 0.2, seed=4)['indices'] != s['indices']
    assert s['indices'] == sorted(set(s['indices']))                      # sorted, no repeats
    with pytest.raises(ValueError, match='fraction'): label_split(labels, 0)

def test_probe_leaves_the_backbone_and_finetuning_moves_it():
    train, val = shapes(40, 1), shapes(20, 2)
    common = dict(epochs=2, batch_size=10, image_size=32, num_workers=0, augment='crop_flip', lr=1e-2)
    for mode in ('linear', 'finetune'):
        torch.manual_seed(0)
        bb = tiny_backbone()
        before = {k: v.clone() for k, v in bb.state_dict().items()}
        m = finetune(bb, train, val, FineTuneConfig(mode=mode, **common), verbose=False)
        changed = [k for k, v in bb.state_dict().items() if not torch.equal(before[k], v)]
        assert m['steps'] == 8 and len(m['step_log']) == 8 and 0 <= m['val_acc'] <= 100
        assert [e['epoch'] for e in m['history']] == [1, 2] and all('val_acc' in e for e in m['history'])
        if mode == 'linear': assert changed == []                         # weights and BatchNorm statistics
        else: assert len(changed) > len(before) // 2

def test_finetune_resumes_a_finished_run(tmp_path):
    train, val = shapes(20, 1), shapes(10, 2)
    cfg = FineTuneConfig(mode='linear', epochs=1, batch_size=10, image_size=32, num_workers=0)
    m1 = finetune(tiny_backbone(), train, val, cfg, out=tmp_path, verbose=False)
    assert (tmp_path / 'checkpoint.pth').is_file() and (tmp_path / 'metrics.json').is_file()
    m2 = finetune(tiny_backbone(), train, val, cfg, out=tmp_path, verbose=False)
    assert m2['steps'] == m1['steps'] == 2 and m2['val_acc'] == m1['val_acc']    # nothing left to train: the saved head

def test_block_features_read_eval_linear_tokens():
    vit = backbone_from_config(TrainConfig(arch='vit_tiny', patch_size=8, backbone_kwargs={'depth': 3}))
    x = torch.rand(2, 3, 32, 32)
    out = vit.get_intermediate_layers(x, 2)
    f = BlockFeatures(vit, 2, True)(x)
    assert f.shape == (2, 3 * 192)
    assert torch.allclose(f, torch.cat([out[0][:, 0], out[1][:, 0], out[1][:, 1:].mean(1)], -1), atol=1e-6)
    resnet = backbone_from_config(TrainConfig(arch='resnet18'))
    assert BlockFeatures(resnet).dim == 512
    with pytest.raises(ValueError, match='pooled output'): BlockFeatures(resnet, 4)
    with pytest.raises(ValueError, match='3 blocks'): BlockFeatures(vit, 4)

def test_layer_decay_scales_lower_blocks_down():
    clf = Classifier(backbone_from_config(TrainConfig(arch='vit_tiny', patch_size=8, backbone_kwargs={'depth': 3})), 10)
    groups = param_groups(clf, backbone_lr_scale=0.5, layer_decay=0.5)
    scale = {id(p): g['lr_scale'] for g in groups for p in g['params']}
    named = dict(clf.named_parameters())
    assert scale[id(named['head.weight'])] == 1.0
    assert scale[id(named['features.backbone.norm.weight'])] == 0.5                       # s * d^0
    assert scale[id(named['features.backbone.blocks.2.attn.qkv.weight'])] == 0.5 * 0.5
    assert scale[id(named['features.backbone.blocks.0.attn.qkv.weight'])] == 0.5 * 0.5 ** 3
    assert scale[id(named['features.backbone.pos_embed'])] == 0.5 * 0.5 ** 4
    decay = {id(p): g['decay'] for g in groups for p in g['params']}
    assert decay[id(named['head.weight'])] and not decay[id(named['head.bias'])]

def test_bad_settings_are_one_line_errors():
    train, val = shapes(10, 1), shapes(10, 2)
    for bad in (dict(mode='probe'), dict(optimizer='lamb'), dict(epochs=0), dict(lr=0)):
        with pytest.raises(ConfigError, match='fine-tune'): finetune(tiny_backbone(), train, val, FineTuneConfig(**bad), verbose=False)
    assert FineTuneConfig(**LINEAR_EVAL).check().optimizer == 'sgd'

def test_dataset_batches_and_transforms():
    from PIL import Image
    class DS(torch.utils.data.Dataset):
        def __init__(self, tf): self.tf, self.targets = tf, [i % 3 for i in range(9)]
        def __len__(self): return 9
        def __getitem__(self, i): return self.tf(Image.fromarray(np.full((40, 50, 3), i * 20, np.uint8))), self.targets[i]
    for aug in ('none', 'crop_flip'):
        tr, va = image_transforms(24, aug)
        b = LabelledBatches(DS(tr), 4, num_workers=0)
        views = list(b.epoch(0))
        assert b.niter_per_ep == 2 and len(views) == 2 and views[0][0].shape == (4, 3, 24, 24) and views[0][0].dtype == torch.float32
        assert sorted(torch.cat([v.labels for v in views]).tolist()) != []
        assert va(Image.new('RGB', (50, 40))).shape == (3, 24, 24)
