"""Tests for optstab.wrn.data: bundled digits, CIFAR-10 files, batches, prefetch. No network."""

import gc
import hashlib
import itertools
import pathlib
import pickle
import tarfile
import urllib.error

import jax
import numpy as np
import pytest

from optstab.wrn import data as D


@pytest.fixture(scope="module")
def digits():
  return D.load_digits(image_size=32, seed=0)


# ----------------------------------------------------------------------------
# Digits
# ----------------------------------------------------------------------------


def test_digits_shapes_classes_and_split(digits):
  raw_images, raw_labels = D._read_digits()
  assert raw_images.shape == (1797, 8, 8, 1) and raw_labels.shape == (1797,)
  assert raw_images.min() == 0 and raw_images.max() == 16
  # First row of the bundled file: a zero.
  assert raw_labels[0] == 0 and list(raw_images[0, 0, :, 0]) == [0, 0, 5, 13, 9, 1, 0, 0]

  assert digits.name == "digits" and digits.num_classes == 10
  assert digits.train_images.shape[1:] == (32, 32, 1) == digits.image_shape
  assert digits.train_images.dtype == np.uint8 and digits.train_labels.dtype == np.int32
  n_train, n_test = len(digits.train_labels), len(digits.test_labels)
  assert n_train + n_test == 1797 and abs(n_test - 0.2 * 1797) <= 10
  # Stratified: each class keeps its share in both splits.
  counts = np.bincount(raw_labels, minlength=10)
  np.testing.assert_array_equal(np.bincount(digits.train_labels, minlength=10)
                                + np.bincount(digits.test_labels, minlength=10), counts)
  np.testing.assert_allclose(np.bincount(digits.test_labels, minlength=10), 0.2 * counts, atol=0.51)
  # Normalization statistics come from the training split.
  x = digits.normalize(digits.train_images)
  assert x.dtype == np.float32
  assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1.0) < 1e-3
  assert digits.augmentation == D.Augmentation(crop_padding=4, horizontal_flip=False)


def test_digits_split_is_deterministic(digits):
  again = D.load_digits(image_size=32, seed=0)
  other = D.load_digits(image_size=32, seed=1)
  np.testing.assert_array_equal(again.train_images, digits.train_images)
  np.testing.assert_array_equal(again.test_labels, digits.test_labels)
  assert not np.array_equal(other.test_labels, digits.test_labels)
  assert len(other.test_labels) == len(digits.test_labels)


def test_digits_resizing():
  native = D.load_digits(image_size=8, seed=3, resize_method="nearest")
  nearest = D.load_digits(image_size=32, seed=3, resize_method="nearest")
  # Nearest upsampling by 4: every pixel becomes a 4x4 block.
  blocks = np.repeat(np.repeat(native.train_images, 4, axis=1), 4, axis=2)
  np.testing.assert_array_equal(nearest.train_images, blocks)
  # Pixels 0..16 are rescaled to 0..255.
  assert native.train_images.max() == 255
  assert set(np.unique(native.train_images)) <= {round(v * 255 / 16) for v in range(17)}
  # Bilinear agrees with jax.image.resize.
  x = np.random.default_rng(0).random((2, 8, 8, 1)) * 255
  for size, method in [(16, "bilinear"), (32, "bilinear"), (12, "nearest")]:
    expected = np.asarray(jax.image.resize(x, (2, size, size, 1), method))
    np.testing.assert_allclose(D.resize_images(x, size, method), expected, atol=1e-3)
  with pytest.raises(ValueError, match="test_fraction"):
    D.load_digits(test_fraction=1.0)
  with pytest.raises(ValueError, match="resize_method"):
    D.load_digits(resize_method="cubic")


# ----------------------------------------------------------------------------
# CIFAR-10 files (a tiny fixture in the real format)
# ----------------------------------------------------------------------------


def _write_cifar(root: pathlib.Path, sizes=(4, 4, 4, 4, 4), n_test=3, seed=0):
  rng = np.random.default_rng(seed)
  batch_dir = root / D.CIFAR10_DIRNAME
  batch_dir.mkdir(parents=True)
  written = {}
  names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
  for name, n in zip(names, list(sizes) + [n_test]):
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, size=n)]
    with open(batch_dir / name, "wb") as f:
      pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                   b"filenames": [b"x.png"] * n}, f)
    written[name] = (data, labels)
  return written


def test_cifar10_loader_on_real_format(tmp_path):
  written = _write_cifar(tmp_path)
  ds = D.load_cifar10(tmp_path, download=False)
  assert ds.name == "cifar10" and ds.num_classes == 10
  assert ds.train_images.shape == (20, 32, 32, 3) and ds.test_images.shape == (3, 32, 32, 3)
  assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int32
  data, labels = written["data_batch_2"]
  # Row layout: 1024 red, 1024 green, 1024 blue, each row-major 32x32.
  img = ds.train_images[4 + 1]
  for (r, c, ch) in [(0, 0, 0), (5, 7, 1), (31, 30, 2)]:
    assert img[r, c, ch] == data[1, ch * 1024 + r * 32 + c]
  np.testing.assert_array_equal(ds.train_labels[4:8], labels)
  np.testing.assert_array_equal(ds.test_labels, written["test_batch"][1])
  np.testing.assert_allclose(ds.mean, ds.train_images.reshape(-1, 3).mean(0) / 255, rtol=1e-5)
  np.testing.assert_allclose(ds.std, (ds.train_images.reshape(-1, 3) / 255).std(0), rtol=1e-5)
  np.testing.assert_allclose(D._channel_stats(ds.train_images, chunk=3)[1], ds.std, rtol=1e-5)
  assert ds.augmentation == D.Augmentation(crop_padding=4, horizontal_flip=True)
  # The batches directory itself is accepted too.
  same = D.load_cifar10(tmp_path / D.CIFAR10_DIRNAME, download=False)
  np.testing.assert_array_equal(same.test_images, ds.test_images)


def test_cifar10_batch_refuses_code_and_bad_format(tmp_path):
  evil = tmp_path / "evil"
  evil.write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.")  # pickle calling os.system
  with pytest.raises(pickle.UnpicklingError, match="refusing"):
    D.load_cifar10_batch(evil)
  bad = tmp_path / "bad"
  with open(bad, "wb") as f:
    pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
  with pytest.raises(ValueError, match="3072"):
    D.load_cifar10_batch(bad)


def test_cifar10_missing_data_error_names_directory(tmp_path):
  empty = tmp_path / "nothing here"
  with pytest.raises(D.DataNotFoundError) as info:
    D.load_cifar10(empty, download=False)
  message = str(info.value)
  assert str(empty) in message and D.CIFAR10_URL in message and D.CIFAR10_MD5 in message

  def offline(url, path):
    raise urllib.error.URLError("no network")

  with pytest.raises(D.DataNotFoundError, match="no network") as info:
    D.load_cifar10(empty, downloader=offline)
  assert str(empty) in str(info.value)
  assert list(empty.iterdir()) == []  # no partial download left behind
  assert isinstance(info.value, FileNotFoundError)


def _make_archive(tmp_path):
  src = tmp_path / "src"
  written = _write_cifar(src, sizes=(2, 2, 2, 2, 2), n_test=2, seed=1)
  archive = tmp_path / "cifar-10-python.tar.gz"
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(src / D.CIFAR10_DIRNAME, arcname=D.CIFAR10_DIRNAME)
  return archive, written


def test_fetch_cifar10_verifies_and_extracts(tmp_path):
  archive, written = _make_archive(tmp_path)
  md5 = hashlib.md5(archive.read_bytes()).hexdigest()
  calls = []

  def fake_download(url, path):
    calls.append(url)
    pathlib.Path(path).write_bytes(archive.read_bytes())

  dest = tmp_path / "cache"
  found = D.fetch_cifar10(dest, md5=md5, downloader=fake_download)
  assert calls == [D.CIFAR10_URL]
  assert found == dest / D.CIFAR10_DIRNAME
  assert (dest / "cifar-10-python.tar.gz").is_file()
  images, labels = D.load_cifar10_batch(found / "test_batch")
  np.testing.assert_array_equal(labels, written["test_batch"][1])
  # Second call: already there, no download.
  assert D.fetch_cifar10(dest, md5=md5, downloader=fake_download) == found
  assert len(calls) == 1


def test_fetch_refuses_archive_escaping_the_directory(tmp_path):
  evil = tmp_path / "evil.tar.gz"
  payload = tmp_path / "payload.txt"
  payload.write_text("x")
  with tarfile.open(evil, "w:gz") as tar:
    tar.add(payload, arcname="../escaped.txt")
  dest = tmp_path / "deep" / "cache"
  copy = lambda url, path: pathlib.Path(path).write_bytes(evil.read_bytes())
  with pytest.raises(ValueError, match="escaped"):
    D.fetch_cifar10(dest, md5=D.md5sum(evil), downloader=copy)
  assert not (tmp_path / "deep" / "escaped.txt").exists()


def test_checksum_mismatch(tmp_path):
  archive, _ = _make_archive(tmp_path)
  D.verify_md5(archive, hashlib.md5(archive.read_bytes()).hexdigest())
  with pytest.raises(D.ChecksumError, match=D.CIFAR10_MD5):
    D.verify_md5(archive, D.CIFAR10_MD5)
  assert D.md5sum(archive) == hashlib.md5(archive.read_bytes()).hexdigest()

  dest = tmp_path / "cache"
  copy = lambda url, path: pathlib.Path(path).write_bytes(archive.read_bytes())
  with pytest.raises(D.ChecksumError):
    D.load_cifar10(dest, downloader=copy)  # the real CIFAR-10 MD5 does not match
  assert list(dest.iterdir()) == []  # the bad download is deleted, nothing extracted


# ----------------------------------------------------------------------------
# Augmentation and batches
# ----------------------------------------------------------------------------


def test_augmentation_crop_and_flip():
  images = (np.arange(6 * 8 * 8 * 2).reshape(6, 8, 8, 2) % 251 + 1).astype(np.uint8)
  aug = D.Augmentation(crop_padding=2, horizontal_flip=False)
  out = D.augment_images(images, np.random.default_rng(0), aug)
  assert out.shape == images.shape and out.dtype == np.uint8
  np.testing.assert_array_equal(out, D.augment_images(images, np.random.default_rng(0), aug))
  assert not np.array_equal(out, D.augment_images(images, np.random.default_rng(1), aug))
  padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
  for i in range(6):  # each output is a window of the zero-padded input
    windows = [padded[i, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
    assert any(np.array_equal(out[i], w) for w in windows)

  flip = D.augment_images(images, np.random.default_rng(0), D.Augmentation(horizontal_flip=True))
  flipped = [np.array_equal(flip[i], images[i, :, ::-1]) for i in range(6)]
  kept = [np.array_equal(flip[i], images[i]) for i in range(6)]
  assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)
  np.testing.assert_array_equal(D.augment_images(images, np.random.default_rng(0), D.Augmentation()),
                                images)
  with pytest.raises(ValueError, match="crop_padding"):
    D.Augmentation(crop_padding=-1)


def test_epoch_batches_cover_and_are_deterministic(digits):
  n = len(digits.train_labels)
  plain = list(D.epoch_batches(digits, "train", 100, epoch=0, seed=0, augmentation=None))
  assert len(plain) == n // 100
  for b in plain:
    assert b.images.shape == (100, 32, 32, 1) and b.images.dtype == np.float32
    assert b.labels.dtype == np.int32 and b.mask.sum() == 100
  # Shuffled without replacement: a full pass with "keep" sees every example once.
  full = list(D.epoch_batches(digits, "train", 100, seed=0, augmentation=None, remainder="keep"))
  assert len(full[-1].labels) == n % 100
  np.testing.assert_array_equal(np.sort(np.concatenate([b.labels for b in full])),
                                np.sort(digits.train_labels))
  # Same (seed, epoch) -> same batches, augmentation included; another epoch differs.
  a = list(D.epoch_batches(digits, "train", 100, epoch=3, seed=7))
  b = list(D.epoch_batches(digits, "train", 100, epoch=3, seed=7))
  c = list(D.epoch_batches(digits, "train", 100, epoch=4, seed=7))
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x.images, y.images)
    np.testing.assert_array_equal(x.labels, y.labels)
  assert not np.array_equal(a[0].labels, c[0].labels)
  # The default train augmentation is the data set's: same labels, different pixels.
  plain3 = list(D.epoch_batches(digits, "train", 100, epoch=3, seed=7, augmentation=None))
  np.testing.assert_array_equal(plain3[0].labels, a[0].labels)
  assert not np.array_equal(plain3[0].images, a[0].images)


def test_test_split_is_ordered_and_padded(digits):
  n = len(digits.test_labels)
  batches = list(D.epoch_batches(digits, "test", 64))
  assert len(batches) == -(-n // 64)
  assert all(b.images.shape[0] == 64 for b in batches)  # static shapes for jit
  mask = np.concatenate([b.mask for b in batches])
  assert mask.sum() == n and mask[:n].all()
  labels = np.concatenate([b.labels for b in batches])[:n]
  np.testing.assert_array_equal(labels, digits.test_labels)  # no shuffle, no augmentation
  np.testing.assert_allclose(batches[0].images, digits.normalize(digits.test_images[:64]))


def test_batch_iterator_epochs_and_resume(digits):
  per_epoch = len(digits.train_labels) // 200
  two = list(D.batch_iterator(digits, "train", 200, seed=1, num_epochs=2))
  assert len(two) == 2 * per_epoch
  resumed = list(D.batch_iterator(digits, "train", 200, seed=1, start_epoch=1, num_epochs=1))
  for x, y in zip(two[per_epoch:], resumed):
    np.testing.assert_array_equal(x.images, y.images)
  endless = D.batch_iterator(digits, "train", 200, seed=1)
  assert len(list(itertools.islice(endless, 3 * per_epoch + 1))) == 3 * per_epoch + 1
  with pytest.raises(ValueError, match="batch_size"):
    next(D.batch_iterator(digits, "train", 10_000))


# ----------------------------------------------------------------------------
# Prefetch
# ----------------------------------------------------------------------------


def test_prefetch_yields_the_same_batches(digits):
  source = list(D.epoch_batches(digits, "train", 128, seed=2))
  with D.prefetch_to_device(iter(source), buffer_size=2) as prefetched:
    got = list(prefetched)
  assert len(got) == len(source)
  for host, dev in zip(source, got):
    assert isinstance(dev, D.Batch) and isinstance(dev.images, jax.Array)
    np.testing.assert_array_equal(np.asarray(dev.images), host.images)
    np.testing.assert_array_equal(np.asarray(dev.labels), host.labels)


def test_prefetch_with_sharding_errors_and_close():
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  items = [{"x": np.full((4, 3), i, np.float32)} for i in range(5)]
  got = list(D.prefetch_to_device(items, sharding=sharding))
  assert [int(g["x"][0, 0]) for g in got] == list(range(5))
  assert all(g["x"].sharding == sharding for g in got)

  def broken():
    yield np.zeros(2)
    raise RuntimeError("source failed")

  it = D.prefetch_to_device(broken())
  next(it)
  with pytest.raises(RuntimeError, match="source failed"):
    next(it)

  produced = []

  def endless():
    for i in itertools.count():
      produced.append(i)
      yield np.full(2, i)

  it = D.prefetch_to_device(endless(), buffer_size=2)
  assert int(next(it)[0]) == 0
  it.close()
  assert not it._thread.is_alive()
  assert len(produced) <= 5  # bounded read-ahead, then stopped
  with pytest.raises(StopIteration):
    next(it)

  # An abandoned prefetcher stops its thread when garbage collected.
  it = D.prefetch_to_device(endless(), buffer_size=1)
  next(it)
  thread = it._thread
  del it
  gc.collect()
  thread.join(timeout=5.0)
  assert not thread.is_alive()


def test_module_exports():
  import optstab.wrn as pkg
  for name in ["load_digits", "load_cifar10", "fetch_cifar10", "batch_iterator", "epoch_batches",
               "prefetch_to_device", "Batch", "Augmentation", "ImageDataset",
               "DataNotFoundError", "ChecksumError"]:
    assert getattr(pkg, name) is getattr(D, name)
