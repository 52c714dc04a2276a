import numpy as np
import pytest
import torch
from torch import nn
import torch.nn.functional as F
from dino_course.augment import IMAGENET_MEAN, IMAGENET_STD
from dino_course.evaluate import (extract_features, knn_classifier, knn_predict, linear_probe, mass_masks, jaccard, shapes_masks_bank,
                                  attention_jaccard)


def brute_force_knn(train_x, train_y, test_x, k, T, num_classes):
    "Loop-per-query reference of DINO's weighted kNN vote."
    preds = []
    for q in test_x:
        sims = [float(F.cosine_similarity(q, t, dim=0)) for t in train_x]
        order = sorted(range(len(sims)), key=lambda j: -sims[j])[:k]
        votes = [0.0] * num_classes
        for j in order: votes[int(train_y[j])] += float(np.exp(sims[j] / T))
        preds.append(int(np.argmax(votes)))
    return torch.tensor(preds)


def test_knn_hand_built():
    # three train points: two near the x axis (class 0), one on the y axis (class 1)
    train = torch.tensor([[1., 0.1], [1., -0.1], [0., 1.]])
    labels = torch.tensor([0, 0, 1])
    test = torch.tensor([[2., 0.], [0.1, 3.], [1., 1.2]])
    assert knn_predict(train, labels, test, k=1).tolist() == [0, 1, 1]
    # with k=3 the two class-0 votes can outweigh one closer class-1 vote at a high temperature...
    assert knn_predict(train, labels, test[2:], k=3, T=10.).tolist() == [0]
    # ...but not at DINO's sharp T=0.07, where the nearest neighbour dominates
    assert knn_predict(train, labels, test[2:], k=3, T=0.07).tolist() == [1]
    # scale does not matter (cosine similarity)
    assert knn_predict(train * 5, labels, test * 0.1, k=1).tolist() == [0, 1, 1]
    assert knn_classifier(train, labels, test, torch.tensor([0, 1, 0]), k=1) == pytest.approx(200 / 3)


def test_knn_vote_weights_exact():
    train = torch.tensor([[1., 0.], [0., 1.]]); labels = torch.tensor([0, 1])
    q = torch.tensor([[np.cos(0.3), np.sin(0.3)]], dtype=torch.float32)
    preds, scores = knn_predict(train, labels, q, k=2, T=0.5, return_scores=True)
    expected = torch.tensor([[np.exp(np.cos(0.3) / 0.5), np.exp(np.sin(0.3) / 0.5)]], dtype=torch.float32)
    torch.testing.assert_close(scores, expected)
    assert preds.tolist() == [0]


@pytest.mark.parametrize('k,T', [(1, 0.07), (5, 0.07), (20, 0.5), (200, 0.07)])
def test_knn_matches_brute_force(k, T):
    g = torch.Generator().manual_seed(k)
    train_x, test_x = torch.randn(120, 16, generator=g), torch.randn(40, 16, generator=g)
    train_y = torch.randint(0, 5, (120,), generator=g)
    ref = brute_force_knn(train_x, train_y, test_x, min(k, 120), T, 5)
    got = knn_predict(train_x, train_y, test_x, k=k, T=T, num_classes=5, batch_size=7)   # uneven chunks
    assert got.tolist() == ref.tolist()


def test_knn_k_larger_than_train_set():
    train = torch.tensor([[1., 0.], [0.9, 0.1], [0., 1.]]); labels = torch.tensor([0, 0, 1])
    # k=50 > 3 train points: all of them vote, nothing raises
    assert knn_predict(train, labels, torch.tensor([[1., 0.05]]), k=50).tolist() == [0]
    assert knn_classifier(train, labels, torch.tensor([[0., 1.]]), torch.tensor([1]), k=50) == 100.0


def test_knn_errors():
    with pytest.raises(ValueError, match='labels'):
        knn_predict(torch.randn(4, 3), torch.tensor([0, 1]), torch.randn(2, 3))
    with pytest.raises(ValueError, match='test labels'):
        knn_classifier(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]), torch.randn(2, 3), torch.tensor([0]))


def test_knn_clusters_high_accuracy():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 32, generator=g) * 3
    ytr, yte = torch.arange(200) % 4, torch.arange(100) % 4
    xtr = centers[ytr] + torch.randn(200, 32, generator=g); xte = centers[yte] + torch.randn(100, 32, generator=g)
    assert knn_classifier(xtr, ytr, xte, yte, k=20) > 95
    # random labels on the same features: near chance (25%)
    assert knn_classifier(xtr, torch.randint(0, 4, (200,), generator=g), xte, yte, k=20) < 50


def test_linear_probe_separable_blobs():
    from sklearn.datasets import make_blobs
    X, y = make_blobs(n_samples=400, centers=3, n_features=10, cluster_std=1.0, random_state=0)
    acc = linear_probe(torch.tensor(X[:300]), torch.tensor(y[:300]), torch.tensor(X[300:]), torch.tensor(y[300:]))
    assert acc >= 99.0
    acc2, clf = linear_probe(X[:300], y[:300], X[300:], y[300:], return_model=True)
    assert acc2 == acc and hasattr(clf, 'predict')
    with pytest.raises(ValueError, match='single class'):
        linear_probe(X[:10], np.zeros(10), X[10:20], y[10:20])


class _Probe(nn.Module):
    "Records what it was called with; returns the per-channel means (B, 3) so inputs can be checked."
    def __init__(self):
        super().__init__(); self.lin = nn.Linear(1, 1); self.seen_training = []; self.seen_dtype = []
    def forward(self, x):
        self.seen_training.append(self.training); self.seen_dtype.append(x.dtype)
        return x.mean((2, 3))


def test_extract_features_restores_mode_and_normalises_uint8():
    m = _Probe().train()
    imgs = torch.full((10, 3, 4, 4), 255, dtype=torch.uint8)
    feats, labels = extract_features(m, imgs, batch_size=4)
    assert m.training and m.seen_training == [False] * 3 and labels is None
    assert set(m.seen_dtype) == {torch.float32} and feats.dtype == torch.float32 and feats.shape == (10, 3)
    expected = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(feats, expected.expand(10, 3))
    # eval mode stays eval; and no gradients are recorded
    m.eval(); feats, _ = extract_features(m, imgs.float() / 255)
    assert not m.training and not feats.requires_grad


def test_extract_features_inputs():
    m = _Probe()
    imgs = torch.randint(0, 256, (7, 3, 8, 8), dtype=torch.uint8); y = torch.arange(7)
    f1, l1 = extract_features(m, (imgs, y), batch_size=3)
    assert l1.tolist() == list(range(7))
    f2, _ = extract_features(m, imgs.permute(0, 2, 3, 1).numpy())            # NHWC numpy, like make_shapes
    torch.testing.assert_close(f1, f2)
    ds = torch.utils.data.TensorDataset(imgs, y)
    f3, l3 = extract_features(m, ds, batch_size=4)
    torch.testing.assert_close(f1, f3); assert l3.tolist() == l1.tolist()
    f4, l4 = extract_features(m, torch.utils.data.DataLoader(ds, batch_size=5))
    torch.testing.assert_close(f1, f4); assert l4.tolist() == l1.tolist()
    with pytest.raises(TypeError, match='extract_features'):
        extract_features(m, 'not data')


def test_extract_features_with_transform_on_pil_dataset():
    from PIL import Image
    from dino_course.augment import eval_transform
    arr = np.random.default_rng(0).integers(0, 256, (5, 40, 40, 3), dtype=np.uint8)
    class DS(torch.utils.data.Dataset):
        def __len__(self): return 5
        def __getitem__(self, i): return Image.fromarray(arr[i]), i % 2
    m = _Probe()
    feats, labels = extract_features(m, DS(), transform=eval_transform(32), batch_size=2)
    assert feats.shape == (5, 3) and labels.tolist() == [0, 1, 0, 1, 0]
    feats_raw, _ = extract_features(m, DS())             # no transform: PIL -> uint8 -> normalised, full 40 px
    assert feats_raw.shape == (5, 3)


def test_attention_masks_and_jaccard():
    "mass_masks keeps the fewest patches holding the mass; jaccard is |A and B| / |A or B| per image."
    maps = torch.tensor([[[0.5, 0.3], [0.15, 0.05]], [[0.25, 0.25], [0.25, 0.25]]])
    assert mass_masks(maps, 0.6).tolist() == [[[True, True], [False, False]], [[True, True], [True, False]]]
    assert mass_masks(maps, 0.5)[0].sum() == 1 and mass_masks(maps, 1.0)[0].all()
    for _ in range(5):                                               # against a direct sort-and-count
        m = torch.rand(3, 4, 4)
        keep = mass_masks(m, 0.6)
        for b in range(3):
            v = (m[b] / m[b].sum()).flatten().sort(descending=True).values
            n = int((v.cumsum(0) - v < 0.6).sum())
            assert keep[b].sum() == n and (m[b][keep[b]].min() >= m[b][~keep[b]].max() if n < 16 else True)
    a = torch.zeros(2, 4, 4, dtype=torch.bool); b = a.clone()
    a[0, :2] = True; b[0, 1:3] = True                                # 8 and 8 pixels overlapping in 4
    assert jaccard(a, b).tolist() == [pytest.approx(4 / 12), 1.0]  # two empty masks agree
    imgs, masks = shapes_masks_bank(16, 32)
    assert imgs.shape == (16, 3, 32, 32) and imgs.dtype == torch.uint8 and masks.shape == (16, 32, 32) and masks.any()


def test_attention_jaccard_of_a_vit_and_of_a_cnn():
    """Attention that lands on the object scores far above a uniform one (whose 60% of the mass is 60% of the patches,
    whatever they show); at 60% of the mass even a perfect map covers only part of the object. A CNN has none (None)."""
    from dino_course.vit import build_backbone
    imgs, masks = shapes_masks_bank(64, 32)
    class Oracle(torch.nn.Module):                                   # 'attends' to the patches in proportion to the object in them
        def __init__(self, uniform=False): super().__init__(); self.uniform = uniform; self.w = torch.nn.Parameter(torch.zeros(1))
        def cls_attention_maps(self, x):
            m = torch.nn.functional.avg_pool2d(masks[:, None].float(), 4)       # (B, 1, 8, 8) object share per patch
            return (torch.ones_like(m) if self.uniform else m + 1e-6).expand(-1, 2, -1, -1)
    oracle, uniform = attention_jaccard(Oracle(), imgs, masks), attention_jaccard(Oracle(True), imgs, masks)
    assert 0.5 < oracle < 0.7 and uniform < 0.25, (oracle, uniform)
    assert attention_jaccard(Oracle(), imgs, masks, threshold=0.9) > oracle
    assert attention_jaccard(build_backbone('resnet18', small_input=True), imgs, masks) is None
