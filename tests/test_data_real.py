"""CIFAR-10 and PTB loaders: real-data tests (marked ``data``) and data-free checks.

Real data is read from ``$PARAMCORRUPT_DATA`` or else ``<repo>/../shared/data``; the tests
that need it are skipped, with the path in the reason, when it is absent. Every cache goes
to a temporary folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from paramcorrupt.data import (
    CIFAR10,
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    EOS,
    UNK,
    AugmentedImages,
    BPTTLoader,
    Corpus,
    batchify,
    bptt_batches,
    cifar10_loaders,
    load_cifar10,
    ptb_loaders,
    resolve_cache_dir,
    seed_augmentation_worker,
)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """No test may write to ~/.cache: the default cache points into tmp_path."""
    monkeypatch.setenv("PARAMCORRUPT_CACHE", str(tmp_path / "env-cache"))


@pytest.fixture
def cifar_dir(require_data) -> Path:
    return require_data("cifar10_jpg/cifar10_jpg_test.tar.gz")  # tests/conftest.py


@pytest.fixture(scope="module")
def ptb(require_data) -> Corpus:
    return Corpus(require_data("ptb_lm/ptb.zip"))


# ----------------------------------------------------------------------------- CIFAR-10, real


@pytest.mark.data
def test_cifar10_limited_decode_and_cache(cifar_dir, tmp_path):
    cache = tmp_path / "cache"
    images, labels = load_cifar10("test", cifar_dir, limit=256, cache_dir=cache, progress=False)
    assert images.shape == (256, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.shape == (256,) and labels.dtype == torch.int64
    # interleaved by class: any prefix is balanced, labels 0..9 in turn
    assert labels[:10].tolist() == list(range(10))
    assert torch.bincount(labels, minlength=10).tolist() == [26] * 6 + [25] * 4
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".pt" and "256" in files[0].name
    blob = torch.load(files[0], weights_only=True)
    assert set(blob) == {"images", "labels"}
    mtime = files[0].stat().st_mtime_ns
    again, again_labels = load_cifar10(
        "test", cifar_dir, limit=256, cache_dir=cache, progress=False
    )
    assert files[0].stat().st_mtime_ns == mtime  # served from the cache
    assert torch.equal(again, images) and torch.equal(again_labels, labels)
    # nothing written beside the data
    assert not any(p.suffix == ".pt" for p in (cifar_dir / "cifar10_jpg").iterdir())
    # plausible pixels: channel means near the CIFAR-10 ones
    means = images.float().div(255).mean(dim=(0, 2, 3))
    torch.testing.assert_close(means, torch.tensor(CIFAR10_MEAN), atol=0.05, rtol=0)


@pytest.mark.data
def test_cifar10_env_vars(cifar_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PARAMCORRUPT_DATA", str(cifar_dir))
    monkeypatch.setenv("PARAMCORRUPT_CACHE", str(tmp_path / "from-env"))
    images, _ = load_cifar10("test", limit=20, progress=False)
    assert images.shape == (20, 3, 32, 32)
    assert len(list((tmp_path / "from-env").glob("*.pt"))) == 1
    assert resolve_cache_dir(None) == tmp_path / "from-env"


@pytest.mark.data
def test_cifar10_dataset_augmentation(cifar_dir, tmp_path):
    common = {"limit": 32, "cache_dir": tmp_path, "progress": False}
    test_set = CIFAR10("test", cifar_dir, **common)
    assert len(test_set) == 32 and test_set.classes == CIFAR10_CLASSES
    x, y = test_set[3]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 3
    expected = (test_set.images[3].float() / 255 - test_set.mean) / test_set.std
    torch.testing.assert_close(x, expected)  # no augmentation on the test split

    first = CIFAR10("test", cifar_dir, augment=True, seed=7, **common)
    second = CIFAR10("test", cifar_dir, augment=True, seed=7, **common)
    draws = [first[i][0] for i in range(32)]
    assert all(torch.equal(a, second[i][0]) for i, a in enumerate(draws))  # seeded
    assert any(not torch.equal(a, test_set[i][0]) for i, a in enumerate(draws))  # augmented
    assert any(not torch.equal(first[0][0], first[0][0]) for _ in range(5))  # fresh draws


@pytest.mark.data
@pytest.mark.slow
def test_cifar10_loaders(cifar_dir, tmp_path):
    options = {"batch_size": 16, "limit_train": 40, "limit_test": 24, "cache_dir": tmp_path}
    train, test = cifar10_loaders(cifar_dir, progress=False, **options)
    again, _ = cifar10_loaders(cifar_dir, progress=False, **options)
    assert len(train.dataset) == 40 and len(test.dataset) == 24
    assert len(train) == 3 and len(test) == 2
    assert train.dataset.augment and not test.dataset.augment
    epoch = list(train)
    x, y = epoch[0]
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32
    assert y.shape == (16,) and y.dtype == torch.int64
    # the same seed gives the same shuffled, augmented batches; the next epoch differs
    for (a, la), (b, lb) in zip(epoch, again):
        assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(next(iter(train))[0], x)
    assert torch.equal(torch.cat([y for _, y in test]), test.dataset.labels)


# ----------------------------------------------------------------------------- PTB, real


@pytest.mark.data
def test_ptb_vocabulary_and_sizes(ptb):
    assert ptb.vocab_size == 10_000
    assert EOS in ptb.dictionary and UNK in ptb.dictionary
    # token counts with <eos>, as in the data README (the canonical Mikolov files)
    assert (len(ptb.train), len(ptb.valid), len(ptb.test)) == (929_589, 73_760, 82_430)
    eos = ptb.dictionary.word2idx[EOS]
    assert (ptb.train == eos).sum().item() == 42_068
    assert ptb.train[-1].item() == eos
    for split in (ptb.train, ptb.valid, ptb.test):
        assert split.dtype == torch.int64 and split.min() >= 0 and split.max() < 10_000
    assert ptb.dictionary.decode(ptb.train[:3]) == ["aer", "banknote", "berlitz"]


@pytest.mark.data
def test_ptb_batchify_and_bptt(ptb):
    source = batchify(ptb.train, 20)
    assert source.shape == (929_589 // 20, 20)
    assert torch.equal(source[:, 1], ptb.train[929_589 // 20 : 2 * (929_589 // 20)])
    windows = list(bptt_batches(source, 70))
    assert len(windows) == -(-(source.size(0) - 1) // 70)
    x, y = windows[0]
    assert x.shape == y.shape == (70, 20)
    assert torch.equal(x[1:], y[:-1])
    last_x, last_y = windows[-1]
    assert last_x.shape[0] == ((source.size(0) - 1) % 70 or 70)
    assert last_y[-1].tolist() == source[-1].tolist()


@pytest.mark.data
def test_ptb_loaders(tmp_path, require_data):
    data = ptb_loaders(require_data("ptb_lm/ptb.zip"), batch_size=20, eval_batch_size=10, bptt=35)
    assert data.corpus.vocab_size == 10_000
    assert data.train.source.shape == (46_479, 20)
    assert len(data.valid) == -(-(73_760 // 10 - 1) // 35)
    assert data.test.batch_size == 1
    assert sum(1 for _ in data.valid) == len(data.valid)
    assert sum(1 for _ in data.valid) == len(data.valid)  # re-iterable
    assert sum(x.numel() for x, _ in data.valid) == data.valid.num_targets


# ----------------------------------------------------------------------------- missing data


def test_missing_data_dir_raises_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="PARAMCORRUPT_DATA") as info:
        load_cifar10("test", tmp_path, limit=4, progress=False)
    assert str(tmp_path / "cifar10_jpg" / "cifar10_jpg_test.tar.gz") in str(info.value)
    with pytest.raises(FileNotFoundError, match="PARAMCORRUPT_DATA") as info:
        Corpus(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere" / "ptb_lm" / "ptb.zip") in str(info.value)


def test_no_data_dir_and_no_env_raises(monkeypatch):
    monkeypatch.delenv("PARAMCORRUPT_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="pass data_dir or set PARAMCORRUPT_DATA"):
        Corpus()
    with pytest.raises(FileNotFoundError, match="PARAMCORRUPT_DATA"):
        cifar10_loaders(limit_train=4, limit_test=4, progress=False)


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        load_cifar10("valid", "/nonexistent")
    with pytest.raises(ValueError, match="limit"):
        load_cifar10("test", "/nonexistent", limit=0)
    with pytest.raises(ValueError, match="1-D"):
        batchify(torch.zeros(2, 2, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="cannot fill"):
        batchify(torch.arange(3), 4)
    with pytest.raises(ValueError, match="bptt"):
        next(bptt_batches(torch.zeros(4, 1), 0))


# ----------------------------------------------------------------------------- data-free logic


def test_corpus_from_texts_and_loader():
    corpus = Corpus.from_texts(" the cat sat\n the dog\n", " the bird\n", " dog sat\n")
    assert corpus.dictionary.idx2word == ["the", "cat", "sat", EOS, "dog", UNK]
    assert corpus.dictionary.decode(corpus.valid) == ["the", UNK, EOS]
    loader = BPTTLoader(corpus.train, batch_size=2, bptt=2)
    assert loader.source.shape == (3, 2)
    batches = list(loader)
    assert len(batches) == len(loader) == 1
    assert [x.shape for x, _ in batches] == [torch.Size([2, 2])]
    assert list(loader)[0][0].tolist() == batches[0][0].tolist()


def test_bptt_windows_cover_every_target_once():
    source = batchify(torch.arange(103), 4)  # [25, 4]
    xs, ys = zip(*bptt_batches(source, 7))
    assert [x.size(0) for x in xs] == [7, 7, 7, 3]
    assert torch.equal(torch.cat(xs), source[:-1]) and torch.equal(torch.cat(ys), source[1:])


def test_augmented_images_crop_and_flip():
    image = torch.arange(2 * 6 * 6, dtype=torch.uint8).view(1, 2, 6, 6)
    ds = AugmentedImages(image, torch.tensor([1]), augment=True, normalize=False, pad=2)
    padded = torch.nn.functional.pad(image[0], (2, 2, 2, 2)).float() / 255
    crops = [padded[:, dy : dy + 6, dx : dx + 6] for dy in range(5) for dx in range(5)]
    possible = {tuple(c.flatten().tolist()) for c in crops + [c.flip(-1) for c in crops]}
    seen = set()
    for _ in range(300):
        x, y = ds[0]
        assert x.shape == (2, 6, 6) and y == 1
        seen.add(tuple(x.flatten().tolist()))
    assert seen <= possible
    assert len(seen) > 30  # most of the 25 shifts x 2 flips turn up
    with pytest.raises(ValueError, match="uint8"):
        AugmentedImages(image.float(), torch.tensor([1]))


def test_loader_workers_get_distinct_augmentation():
    torch.manual_seed(0)
    same = torch.randint(0, 256, (1, 3, 8, 8), dtype=torch.uint8).expand(8, 3, 8, 8).contiguous()
    ds = AugmentedImages(same, torch.zeros(8, dtype=torch.long), augment=True)
    loader = DataLoader(
        ds,
        batch_size=4,
        num_workers=2,
        worker_init_fn=seed_augmentation_worker,
        generator=torch.Generator().manual_seed(0),
    )
    first, second = (x for x, _ in loader)
    assert not torch.equal(first, second)  # worker 0 and worker 1 draw different crops
