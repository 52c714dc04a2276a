"""Tests for dino_course.data: the shapes contract, each real dataset read through its loader from a fake copy
of its on-disk layout, the forgiving ImageFolder, downloads against a loopback HTTP server, label fractions."""
import csv, dataclasses, hashlib, http.server, io, os, pickle, struct, subprocess, sys, tarfile, threading, warnings, zipfile, zlib
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import datasets as tvd
from torchvision.transforms import v2

from dino_course import data as D
from dino_course.data import (ARCHIVES, Archive, ChecksumError, DatasetNotFoundError, DownloadError, SafeImageFolder,
                              ShapesDataset, download_and_extract, download_url, extract_archive, file_hash, get_data_root,
                              get_dataset, label_fraction, label_subset, make_shapes, SHAPE_CLASSES)

RNG = np.random.default_rng(0)
def rand_img(h=24, w=32): return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)

# ---------------------------------------------------------------- shapes
def test_make_shapes_contract():
    im, lab, m = make_shapes(50, 48, seed=0)
    assert (im.shape, im.dtype, lab.shape, lab.dtype, m.shape, m.dtype) == (
        (50, 48, 48, 3), np.uint8, (50,), np.int64, (50, 48, 48), np.bool_)
    assert lab.min() >= 0 and lab.max() < len(SHAPE_CLASSES) == 10
    im2, lab2, m2 = make_shapes(50, 48, seed=0, chunk=7)
    assert im.tobytes() == im2.tobytes() and (lab == lab2).all() and (m == m2).all()
    assert (make_shapes(50, 48, seed=1)[0] != im).any()

def test_masks_match_pixels():
    im, _, m = make_shapes(300, 64, seed=3)
    area = m.mean((1, 2))
    assert area.min() > 0.02 and area.max() < 0.6                     # every image has an object, none is all object
    luma = im.astype(np.float32) @ np.float32([0.299, 0.587, 0.114])
    inside = (luma * m).sum((1, 2)) / m.sum((1, 2)); outside = (luma * ~m).sum((1, 2)) / (~m).sum((1, 2))
    assert np.abs(inside - outside).min() > 25                          # the object differs from its background
    dx = np.abs(np.diff(im.astype(int), axis=2)).sum(-1)                # colour change between horizontal neighbours
    edge = m[:, :, 1:] != m[:, :, :-1]
    assert dx[edge].mean() > 20 * dx[~edge].mean()                      # pixel colours change where the mask does

def test_shapes_dataset_and_splits():
    tr, te = get_dataset('shapes', 'train', n=40, size=32), get_dataset('shapes', 'test', n=40, size=32)
    assert (tr.images != te.images).any() and len(tr) == 40
    assert (tr.images == make_shapes(40, 32, seed=0)[0]).all() and (te.images == make_shapes(40, 32, seed=2)[0]).all()
    img, label = tr[5]
    assert img.shape == (3, 32, 32) and img.dtype == torch.uint8 and label == tr.labels[5]
    assert get_dataset('shapes', n=4, as_pil=True)[0][0].mode == 'RGB'
    assert len(get_dataset('shapes', 'val')) == 1000
    with pytest.raises(ValueError, match='shapes has splits train, val, test'): get_dataset('shapes', 'unlabeled')

def test_shapes_joint_transform_moves_mask():
    ds = ShapesDataset(8, 32, return_mask=True, transforms=v2.RandomHorizontalFlip(p=1.0))
    img, label, mask = ds[2]
    assert (img.permute(1, 2, 0).numpy() == ds.images[2][:, ::-1]).all()
    assert (mask.numpy() == ds.masks[2][:, ::-1]).all() and mask.dtype == torch.bool

def test_photos():
    ds = get_dataset('photos')
    assert {'cat', 'astronaut', 'coffee', 'rocket', 'camera', 'grace_hopper', 'china', 'flower'} == set(ds.names)
    for i, (img, label) in enumerate(ds): assert img.mode == 'RGB' and label == i and min(img.size) >= 256
    assert len(ds.licences) == len(ds)

# ---------------------------------------------------------------- data root and missing data
def test_data_root(monkeypatch, tmp_path):
    monkeypatch.delenv('DINO_COURSE_DATA', raising=False)
    assert get_data_root(tmp_path) == tmp_path.resolve()
    assert get_data_root() == Path(D.__file__).resolve().parent.parent / 'data'    # editable install: the clone's data/
    monkeypatch.setenv('DINO_COURSE_DATA', str(tmp_path / 'x'))
    assert get_data_root() == (tmp_path / 'x').resolve()

@pytest.mark.parametrize('name,opts,folder,cmd', [
    ('stl10', {}, 'stl10_binary', 'python -m dino_course.data download stl10 --root'),
    ('imagenette', {}, 'imagenette2-320', 'python -m dino_course.data download imagenette --size 320 --root'),
    ('imagenette', dict(size='full'), 'imagenette2', 'download imagenette --size full'),
    ('voc', {}, 'VOCdevkit/VOC2012', 'python -m dino_course.data download voc --root'),
    ('cifar10', {}, 'cifar-10-batches-py', 'python -m dino_course.data download cifar10 --root')])
def test_missing_dataset_message(tmp_path, name, opts, folder, cmd):
    with pytest.raises(DatasetNotFoundError) as e: get_dataset(name, root=tmp_path, **opts)
    msg = str(e.value)
    assert isinstance(e.value, FileNotFoundError) and '\n' not in msg
    assert str(tmp_path / folder) in msg and cmd in msg and str(tmp_path) in msg
    assert e.value.__cause__ is None and (e.value.__context__ is None or e.value.__suppress_context__)  # nothing chained
    assert len(e.traceback) <= 3                                              # raised by our loader, not deep in torchvision

def test_imagenette_checksums_match_torchvision():
    for size, (url, md5) in getattr(tvd.Imagenette, '_ARCHIVES', {}).items():
        a = ARCHIVES[f"imagenette-{size.removesuffix('px')}"]
        assert (a.url, a.md5) == (url, md5)

# ---------------------------------------------------------------- fake copies of the real layouts
def make_stl10(root, n_train=10, n_test=6, n_unlab=5, skip=()):
    base = root / 'stl10_binary'; base.mkdir(parents=True)
    out = {}
    for split, n in [('train', n_train), ('test', n_test), ('unlabeled', n_unlab)]:
        imgs = RNG.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
        if f'{split}_X.bin' not in skip: imgs.transpose(0, 3, 2, 1).tofile(base / f'{split}_X.bin')   # column-major, as STL-10 ships
        labels = np.arange(n) % 10
        if split != 'unlabeled': (labels + 1).astype(np.uint8).tofile(base / f'{split}_y.bin')   # 1-based on disk
        out[split] = imgs, labels
    (base / 'class_names.txt').write_text('\n'.join(['airplane', 'bird', 'car', 'cat', 'deer', 'dog', 'horse', 'monkey', 'ship', 'truck']))
    (base / 'fold_indices.txt').write_text('\n'.join(' '.join(map(str, range(i % 3, n_train, 3))) for i in range(10)))
    return out

def test_stl10(tmp_path):
    truth = make_stl10(tmp_path)
    for split in ('train', 'test', 'unlabeled'):
        ds = get_dataset('stl10', split, root=tmp_path)
        imgs, labels = truth[split]
        assert len(ds) == len(imgs)
        img, y = ds[3]
        assert img.mode == 'RGB' and img.size == (96, 96) and (np.asarray(img) == imgs[3]).all()
        assert y == (-1 if split == 'unlabeled' else labels[3])
    assert isinstance(get_dataset('stl10', 'unlabeled', root=tmp_path).data, np.memmap)   # read from disk, not into RAM
    assert len(get_dataset('stl10', 'train+unlabeled', root=tmp_path)) == 15
    assert len(get_dataset('stl10', 'train', root=tmp_path, folds=0)) == 4
    assert get_dataset('stl10', 'test', root=tmp_path).classes[0] == 'airplane'
    assert (label_fraction(get_dataset('stl10', 'train+unlabeled', root=tmp_path), 1.0) < 10).all()   # -1 left out

def test_stl10_partial_and_truncated(tmp_path):
    make_stl10(tmp_path, skip=('unlabeled_X.bin',))
    assert len(get_dataset('stl10', 'test', root=tmp_path)) == 6                 # test works without the unlabeled file
    with pytest.raises(DatasetNotFoundError, match=r'unlabeled_X\.bin is missing'): get_dataset('stl10', 'unlabeled', root=tmp_path)
    with open(tmp_path / 'stl10_binary/train_X.bin', 'ab') as f: f.write(b'x')
    with pytest.raises(DatasetNotFoundError, match='truncated'): get_dataset('stl10', 'train', root=tmp_path)

def make_cifar10(root, n=6):
    base = root / 'cifar-10-batches-py'; base.mkdir(parents=True)
    names = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']
    truth = {}
    for f in [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']:
        imgs = RNG.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        labels = list(RNG.integers(0, 10, n))
        with open(base / f, 'wb') as fh:
            pickle.dump({'data': imgs.transpose(0, 3, 1, 2).reshape(n, -1), 'labels': labels}, fh)   # rows: R, G, B planes
        truth[f] = imgs, labels
    with open(base / 'batches.meta', 'wb') as fh: pickle.dump({'label_names': names}, fh)
    return truth

def test_cifar10(tmp_path):
    truth = make_cifar10(tmp_path)
    tr, te = get_dataset('cifar10', 'train', root=tmp_path), get_dataset('cifar10', 'test', root=tmp_path)
    assert (len(tr), len(te)) == (30, 6) and tr.classes[1] == 'automobile'
    img, y = te[2]
    assert img.mode == 'RGB' and (np.asarray(img) == truth['test_batch'][0][2]).all() and y == truth['test_batch'][1][2]
    assert (np.asarray(tr[6][0]) == truth['data_batch_2'][0][0]).all()
    (tmp_path / 'cifar-10-batches-py/test_batch').write_bytes(b'\x80\x04garbage')
    with pytest.raises(DatasetNotFoundError, match='corrupted'): get_dataset('cifar10', 'test', root=tmp_path)

WNIDS = sorted(tvd.Imagenette._WNID_TO_CLASS)

def make_imagenette(root, folder='imagenette2-160', per_class=(2, 1)):
    base = root / folder
    rows = []
    for split, k in zip(('train', 'val'), per_class):
        for ci, wnid in enumerate(WNIDS):
            (base / split / wnid).mkdir(parents=True)
            for j in range(k):
                rel = f'{split}/{wnid}/{wnid}_{j}.JPEG'
                Image.fromarray(rand_img()).save(base / rel, 'JPEG')
                noisy = WNIDS[(ci + 1) % 10] if (split == 'train' and j == 0) else wnid     # flip the first image of each class
                rows.append([rel, wnid, wnid, wnid, wnid, noisy, split == 'val'])
    with open(base / 'noisy_imagenette.csv', 'w', newline='') as f:
        w = csv.writer(f); w.writerow(['path', 'noisy_labels_0', 'noisy_labels_1', 'noisy_labels_5', 'noisy_labels_25', 'noisy_labels_50', 'is_valid'])
        w.writerows(rows)
    return base

def test_imagenette(tmp_path):
    make_imagenette(tmp_path)
    ds = get_dataset('imagenette', 'train', root=tmp_path, size=160)
    assert len(ds) == 20 and ds.classes[0] == 'tench' and len(ds.classes) == 10
    img, y = ds[0]
    assert img.mode == 'RGB' and img.size == (32, 24) and y == 0
    clean, noisy = ds.targets, get_dataset('imagenette', 'train', root=tmp_path, size=160, noisy_labels=50).targets
    assert clean == get_dataset('imagenette', 'train', root=tmp_path, size='160px', noisy_labels=0).targets
    flipped = [i for i, (a, b) in enumerate(zip(clean, noisy)) if a != b]
    assert len(flipped) == 10 and all(noisy[i] == (clean[i] + 1) % 10 for i in flipped)
    assert len(get_dataset('imagenette', 'val', root=tmp_path, size=160, noisy_labels=50)) == 10
    with pytest.raises(ValueError, match='noisy_labels must be one of'): get_dataset('imagenette', root=tmp_path, size=160, noisy_labels=3)
    with pytest.raises(ValueError, match='imagenette has splits train, val'): get_dataset('imagenette', 'test', root=tmp_path, size=160)
    (tmp_path / 'imagenette2-160/noisy_imagenette.csv').unlink()
    with pytest.raises(DatasetNotFoundError, match='noisy_imagenette.csv is missing'):
        get_dataset('imagenette', root=tmp_path, size=160, noisy_labels=5)

VOC_PALETTE = sum(([(i >> 0 & 1) * 128, (i >> 1 & 1) * 128, (i >> 2 & 1) * 128] for i in range(256)), [])

def make_voc(root, ids=('2007_000032', '2007_000039', '2007_000063')):
    base = root / 'VOCdevkit/VOC2012'
    for d in ('JPEGImages', 'SegmentationClass', 'ImageSets/Segmentation'): (base / d).mkdir(parents=True)
    masks = {}
    for k, i in enumerate(ids):
        Image.fromarray(rand_img(30, 40)).save(base / f'JPEGImages/{i}.jpg')
        m = np.zeros((30, 40), np.uint8); m[8:22, 10:30] = 255; m[10:20, 12:28] = k + 1      # object with a 255 border
        p = Image.fromarray(m, 'P'); p.putpalette(VOC_PALETTE); p.save(base / f'SegmentationClass/{i}.png')
        masks[i] = m
    (base / 'ImageSets/Segmentation/train.txt').write_text('\n'.join(ids[:2]) + '\n')
    (base / 'ImageSets/Segmentation/val.txt').write_text(ids[2] + '\n')
    return masks

def test_voc(tmp_path):
    masks = make_voc(tmp_path)
    tr, va = get_dataset('voc', 'train', root=tmp_path), get_dataset('voc', 'val', root=tmp_path)
    assert (len(tr), len(va)) == (2, 1)
    img, mask = va[0]
    assert img.mode == 'RGB' and img.size == (40, 30) and mask.mode == 'P'
    m = np.asarray(mask)
    assert (m == masks['2007_000063']).all() and set(np.unique(m)) == {0, 3, 255}     # border class kept as 255
    both = get_dataset('voc', 'train', root=tmp_path, transforms=lambda i, t: (i.resize((20, 15)), t.resize((20, 15), Image.NEAREST)))
    assert both[0][0].size == both[0][1].size == (20, 15)
    with pytest.raises(ValueError, match='not public|splits train, val, trainval'): get_dataset('voc', 'test', root=tmp_path)
    (tmp_path / 'VOCdevkit/VOC2012/SegmentationClass/2007_000039.png').unlink()
    with pytest.raises(DatasetNotFoundError, match='1 files listed in train.txt are missing'): get_dataset('voc', 'train', root=tmp_path)

# ---------------------------------------------------------------- user folders with bad images
def png_header(w, h):
    chunk = lambda kind, body: struct.pack('>I', len(body)) + kind + body + struct.pack('>I', zlib.crc32(kind + body))
    return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 8, 2, 0, 0, 0)) + chunk(b'IEND', b'')

def make_messy(root):
    rgb = lambda w=40, h=30: Image.fromarray(rand_img(h, w))
    for c in ('cat', 'dog'): (root / c).mkdir(parents=True); rgb().save(root / c / 'ok.jpg'); rgb().save(root / c / 'ok.png')
    (root / 'cat/zero.jpg').write_bytes(b'')
    buf = io.BytesIO(); rgb(300, 300).save(buf, 'JPEG', quality=95); (root / 'cat/truncated.jpg').write_bytes(buf.getvalue()[:3000])
    (root / 'cat/text.jpg').write_text('definitely not a JPEG')
    rgb().convert('L').save(root / 'dog/grey.jpg'); rgb().convert('RGBA').save(root / 'dog/rgba.png')
    rgb().convert('CMYK').save(root / 'dog/cmyk.jpg'); rgb().convert('P').save(root / 'dog/palette.png')
    Image.fromarray(np.full((30, 40), 65535, np.uint16)).save(root / 'dog/scan16.png')
    Image.new('RGBA', (20, 20), (255, 0, 0, 0)).save(root / 'dog/transparent.png')
    rgb(1, 1).save(root / 'dog/one_pixel.png')
    (root / 'dog/bomb.png').write_bytes(png_header(50_000, 50_000))
    rgb(3000, 40).save(root / 'dog/wide.jpg')
    (root / 'notes.txt').write_text('loose file beside the class folders')
    (root / '.ipynb_checkpoints').mkdir(); rgb().save(root / '.ipynb_checkpoints/x.jpg')
    return root

def test_safe_image_folder(tmp_path):
    root = make_messy(tmp_path / 'imgs')
    with pytest.warns(UserWarning, match=r'skipped 5 unusable file\(s\)') as rec:
        ds = get_dataset(root, max_side=1000)
    assert ds.classes == ['cat', 'dog']                                  # hidden .ipynb_checkpoints is not a class
    assert sorted(Path(p).name for p, _ in ds.skipped) == ['bomb.png', 'one_pixel.png', 'text.jpg', 'truncated.jpg', 'zero.jpg']
    msg = str(rec[0].message)
    assert all(n in msg for n in ('zero.jpg', 'truncated.jpg', 'bomb.png', 'notes.txt')) and '\n' not in msg
    assert {'L', 'RGBA', 'CMYK', 'P'} <= set(ds.modes)
    assert len(ds) == 11 and ds.targets.count(0) == 2
    items = {Path(p).name: ds[i] for i, (p, _) in enumerate(ds.samples)}
    for img, _ in items.values(): assert img.mode == 'RGB'
    assert items['wide.jpg'][0].size[0] <= 1000                          # shrunk to max_side
    assert np.asarray(items['scan16.png'][0]).min() == 255              # 16-bit white stays white
    assert (np.asarray(items['transparent.png'][0]) == 255).all()       # transparency composited on white
    assert ds.failures == []

def test_safe_image_folder_full_verify_and_limits(tmp_path):
    root = make_messy(tmp_path / 'imgs')
    with warnings.catch_warnings(): warnings.simplefilter('ignore'); ds = SafeImageFolder(root, verify='full', max_pixels=100_000)
    assert 'wide.jpg' in [Path(p).name for p, _ in ds.skipped]          # 120,000 px is over this max_pixels
    assert 'over max_pixels=100,000' in ds.report()

def test_safe_image_folder_never_crashes_mid_epoch(tmp_path):
    root = tmp_path / 'flat'; root.mkdir()
    for i in range(6): Image.fromarray(rand_img()).save(root / f'{i}.png')
    ds = get_dataset(root, transform=v2.Compose([v2.ToImage(), v2.Resize((16, 16))]))
    assert ds.classes == ['flat'] and set(ds.targets) == {0}             # a flat folder: one class, label 0
    (root / '2.png').write_bytes(b'\x89PNG broken')                     # goes bad after the scan
    (root / '4.png').unlink()                                            # ... or disappears
    with pytest.warns(UserWarning, match='using the next image instead'):
        batches = list(torch.utils.data.DataLoader(ds, batch_size=4))
    assert sum(len(b[0]) for b in batches) == 6 and batches[0][0].shape == (4, 3, 16, 16)
    assert sorted(Path(p).name for p, _ in ds.failures) == ['2.png', '4.png']

def test_safe_image_folder_clear_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError, match='does not exist'): get_dataset(tmp_path / 'nope')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(DatasetNotFoundError, match='No image files'): get_dataset(tmp_path / 'empty')
    (tmp_path / 'classes/a').mkdir(parents=True); (tmp_path / 'classes/a/x.txt').write_text('x')
    with pytest.raises(DatasetNotFoundError, match='No image files'): get_dataset(tmp_path / 'classes')
    bad = tmp_path / 'bad'; bad.mkdir(); (bad / 'a.jpg').write_bytes(b''); (bad / 'b.png').write_text('no')
    with pytest.raises(DatasetNotFoundError, match='None of the 2 image files'): get_dataset(bad)

def test_folder_with_split_subfolders(tmp_path):
    for split in ('train', 'val'):
        for c in ('a', 'b'): (tmp_path / split / c).mkdir(parents=True); Image.fromarray(rand_img()).save(tmp_path / split / c / '1.png')
    assert Path(get_dataset(tmp_path, 'val').root).name == 'val' and get_dataset(tmp_path).classes == ['a', 'b']

# ---------------------------------------------------------------- downloads, loopback server
# (the `server` and `no_proxy` fixtures: tests/conftest.py)

def make_tgz(path, files: dict):
    with tarfile.open(path, 'w:gz') as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name); info.size = len(data); t.addfile(info, io.BytesIO(data))
    return path

def test_download_checksum_match_and_mismatch(server, tmp_path):
    served, base, hits = server
    payload = os.urandom(300_000); (served / 'blob.bin').write_bytes(payload)
    md5, sha = hashlib.md5(payload).hexdigest(), hashlib.sha256(payload).hexdigest()
    (tmp_path / 'dl').mkdir()
    out = download_url(f'{base}/blob.bin', tmp_path / 'dl', md5=md5)      # a folder: keeps the URL's file name
    assert out == tmp_path / 'dl/blob.bin' and out.read_bytes() == payload
    assert download_url(f'{base}/blob.bin', out, sha256=sha) == out and len(hits) == 1   # already there: not fetched again
    with pytest.raises(ChecksumError, match='expected 0{32}; the file was removed'):
        download_url(f'{base}/blob.bin', tmp_path / 'bad.bin', md5='0' * 32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['dl', 'served']        # no bad.bin, no bad.bin.part
    out.write_bytes(b'corrupted'); download_url(f'{base}/blob.bin', out, md5=md5)  # a bad local copy is fetched again
    assert out.read_bytes() == payload
    with pytest.raises(DownloadError, match='could not download'): download_url(f'{base}/missing.bin', tmp_path / 'm.bin')
    assert not (tmp_path / 'm.bin').exists() and not (tmp_path / 'm.bin.part').exists()

def test_download_and_extract(server, tmp_path):
    served, base, _ = server
    tgz = make_tgz(served / 'pack.tgz', {'pack/a.txt': b'a', 'pack/sub/b.txt': b'b'})
    with zipfile.ZipFile(served / 'pack.zip', 'w') as z: z.writestr('zpack/c.txt', 'c')
    dest = tmp_path / 'root'
    assert download_and_extract(f'{base}/pack.tgz', dest, md5=file_hash(tgz), remove_archive=True) == [dest / 'pack']
    assert (dest / 'pack/sub/b.txt').read_bytes() == b'b' and not (dest / 'pack.tgz').exists()
    download_and_extract(f'{base}/pack.zip', dest, sha256=file_hash(served / 'pack.zip', 'sha256'))
    assert (dest / 'zpack/c.txt').read_text() == 'c'
    make_tgz(served / 'more.tgz', {'pack/new.txt': b'n'})                      # merges into an existing folder
    download_and_extract(f'{base}/more.tgz', dest)
    assert sorted(p.name for p in (dest / 'pack').iterdir()) == ['a.txt', 'new.txt', 'sub']
    make_tgz(served / 'evil.tgz', {'../evil.txt': b'x'})
    with pytest.raises((tarfile.TarError, ValueError)): extract_archive(download_url(f'{base}/evil.tgz', tmp_path / 'evil.tgz'), dest)
    assert not (tmp_path / 'evil.txt').exists() and not list(dest.glob('.extracting-*'))

def test_cli_download_end_to_end(server, tmp_path, monkeypatch, capsys):
    served, base, _ = server
    monkeypatch.setenv('DINO_COURSE_QUIET', '1')                            # no progress bar on stderr
    src = tmp_path / 'src'; make_cifar10(src)
    with tarfile.open(served / 'cifar.tar.gz', 'w:gz') as t: t.add(src / 'cifar-10-batches-py', 'cifar-10-batches-py')
    good = Archive('CIFAR-10', f'{base}/cifar.tar.gz', file_hash(served / 'cifar.tar.gz'), 'cifar-10-batches-py', 'tiny')
    root = tmp_path / 'data'
    monkeypatch.setitem(ARCHIVES, 'cifar10', dataclasses.replace(good, md5='f' * 32))
    assert D.main(['download', 'cifar10', '--root', str(root)]) == 1
    err = capsys.readouterr().err
    assert err.startswith('error: md5 of') and err.count('\n') == 1 and not (root / 'cifar-10-batches-py').exists()
    monkeypatch.setitem(ARCHIVES, 'cifar10', good)
    assert D.main(['download', 'cifar10', '--root', str(root)]) == 0
    assert len(get_dataset('cifar10', 'test', root=root)) == 6 and not (root / 'cifar.tar.gz').exists()
    assert D.main(['list', '--root', str(root)]) == 0 and 'present  cifar10' in capsys.readouterr().out

def test_module_entry_point(tmp_path):
    r = subprocess.run([sys.executable, '-m', 'dino_course.data', 'list', '--root', str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and f'data root: {tmp_path}' in r.stdout and 'missing  stl10' in r.stdout

def test_benchmark():
    speeds = D.benchmark_shapes(sizes=(32,), n=200, repeats=1)
    assert set(speeds) == {32} and speeds[32] > 100

# ---------------------------------------------------------------- label fractions
def test_label_fraction_stratified_and_seeded():
    labels = np.repeat(np.arange(5), [100, 50, 20, 7, 2])
    for f in (0.01, 0.1, 0.2, 0.5):
        idx = label_fraction(labels, f, seed=0)
        counts, full = np.bincount(labels[idx], minlength=5), np.bincount(labels)
        assert (np.abs(counts - f * full) <= 1).all() and (counts >= 1).all()
        assert (np.diff(idx) > 0).all()                                  # sorted, no duplicates
        assert (idx == label_fraction(labels, f, seed=0)).all()
    assert set(label_fraction(labels, 0.1, seed=0)) <= set(label_fraction(labels, 0.2, seed=0))   # nested
    assert set(label_fraction(labels, 0.2, seed=0)) != set(label_fraction(labels, 0.2, seed=1))
    assert len(label_fraction(labels, 1.0)) == len(labels)
    with pytest.raises(ValueError, match='fraction must be in'): label_fraction(labels, 0)

def test_label_fraction_on_datasets():
    ds = get_dataset('shapes', n=500, size=16)
    idx = label_fraction(ds, 0.2, seed=3)
    assert (idx == label_fraction(ds.labels, 0.2, seed=3)).all()
    sub = label_subset(ds, 0.2, seed=3)
    assert len(sub) == len(idx) and sub[0][1] == ds.labels[idx[0]]
    assert len(label_fraction(sub, 0.5)) == pytest.approx(len(idx) / 2, abs=10)
    idx = label_fraction(np.array([-1, -1, 0, 0, 1, 1]), 0.5)          # STL-10's unlabeled -1 never picked
    assert len(idx) == 2 and idx[0] in (2, 3) and idx[1] in (4, 5)

def test_readme_documents_every_archive():
    readme = (Path(D.__file__).resolve().parent.parent / 'data/README.md').read_text()
    for key, a in ARCHIVES.items():
        assert a.folder in readme and Path(a.url).name in readme, key
        assert f"python -m dino_course.data download {key.split('-')[0]}" in readme, key
