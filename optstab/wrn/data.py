"""Data for the WideResNet demo: bundled digits, CIFAR-10, batches and device prefetch.

Two image-classification data sets, both returned as an :class:`ImageDataset`
(uint8 NHWC images, int32 labels, the training split's per-channel mean/std,
and the data set's default :class:`Augmentation`):

* :func:`load_digits` -- the offline default. The UCI hand-written digits
  (1797 8x8 grayscale images, 10 classes) ship inside the package
  (``optstab/wrn/digits.csv.gz``; attribution in ``DATA_NOTICE.md``), with a
  seeded stratified train/test split and upsampling to ``image_size`` (32 by
  default: the reference model's 8x8 pooling head needs a last feature map of at
  least 8x8, see :mod:`optstab.wrn.model`).
* :func:`load_cifar10` -- CIFAR-10 from the standard python batches
  (``cifar-10-batches-py/data_batch_1..5``, ``test_batch``) in a local
  directory, downloaded there (MD5-verified) when missing and a network exists.

The input pipeline runs on the host in NumPy: :func:`batch_iterator` yields
:class:`Batch` es (normalized float32 images, labels, a validity mask) for a
seeded sequence of epochs, with random-crop / flip augmentation;
:func:`prefetch_to_device` (the trial runner's, :mod:`optstab.runner`) moves
them to the accelerator from a background thread (optionally with a
``jax.sharding.Sharding`` for data parallelism), so
neither step sits on the training step's critical path::

  data = load_digits(image_size=32)
  batches = prefetch_to_device(batch_iterator(data, "train", 128, seed=0), buffer_size=2)
  for step, batch in zip(range(num_steps), batches):
    state = train_step(state, batch.images, batch.labels)
  batches.close()
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.resources
import os
import pathlib
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from typing import Any, Callable, Iterator, Literal, NamedTuple

import numpy as np

from optstab import _validation
# The device prefetch is the trial runner's, shared with the Transformer demo;
# re-exported here, where the input pipeline is.
from optstab.runner import Prefetcher as Prefetcher
from optstab.runner import prefetch_to_device as prefetch_to_device

__all__ = [
    "CIFAR10_URL",
    "CIFAR10_MD5",
    "CIFAR10_DIRNAME",
    "CIFAR10_CLASSES",
    "DataNotFoundError",
    "ChecksumError",
    "Augmentation",
    "ImageDataset",
    "Batch",
    "load_digits",
    "resize_images",
    "default_data_dir",
    "md5sum",
    "verify_md5",
    "download_url",
    "fetch_cifar10",
    "load_cifar10_batch",
    "load_cifar10",
    "augment_images",
    "normalize_images",
    "num_batches",
    "epoch_batches",
    "batch_iterator",
    "Prefetcher",
    "prefetch_to_device",
]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_DIRNAME = "cifar-10-batches-py"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
_DIGITS_RESOURCE = "digits.csv.gz"
_DATA_DIR_ENV = "OPTSTAB_DATA_DIR"


class DataNotFoundError(FileNotFoundError):
  """A data set is neither on disk nor downloadable; the message says how to get it."""


class ChecksumError(ValueError):
  """A downloaded or local archive does not have the expected MD5 checksum."""


# ----------------------------------------------------------------------------
# Data set container and augmentation settings
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """Standard training-time augmentation, configured per data set.

  Attributes:
    crop_padding: pad each image with this many zero pixels on every side, then
      crop a random window of the original size (0 disables; 4 is the CIFAR-10
      standard for 32x32 images).
    horizontal_flip: mirror each image left-right with probability 1/2 (right
      for CIFAR-10 objects, wrong for digits).
  """

  crop_padding: int = 0
  horizontal_flip: bool = False

  def __post_init__(self):
    _validation.check_positive_int("crop_padding", self.crop_padding, minimum=0)
    if not isinstance(self.horizontal_flip, bool):
      raise ValueError(f"horizontal_flip must be a bool; got {self.horizontal_flip!r}.")

  @property
  def enabled(self) -> bool:
    return self.crop_padding > 0 or self.horizontal_flip


@dataclasses.dataclass(frozen=True, eq=False)
class ImageDataset:
  """An image-classification data set held in host memory.

  Attributes:
    name: ``"digits"`` or ``"cifar10"``.
    train_images, test_images: uint8 ``[N, H, W, C]`` (pixel values 0..255).
    train_labels, test_labels: int32 ``[N]`` in ``[0, num_classes)``.
    num_classes: number of classes.
    mean, std: float32 ``[C]``, per-channel statistics of the training images
      scaled to [0, 1]; :meth:`normalize` maps images to ``(x / 255 - mean) / std``.
    augmentation: the data set's default training :class:`Augmentation`.
  """

  name: str
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int
  mean: np.ndarray
  std: np.ndarray
  augmentation: Augmentation = Augmentation()

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """``(H, W, C)``."""
    return tuple(self.train_images.shape[1:])  # type: ignore[return-value]

  @property
  def image_size(self) -> int:
    """``H`` (the images are square)."""
    return int(self.train_images.shape[1])

  @property
  def in_channels(self) -> int:
    return int(self.train_images.shape[3])

  def split(self, name: Literal["train", "test"]) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` of the ``"train"`` or ``"test"`` split."""
    _validation.check_one_of("split", name, ("train", "test"))
    if name == "train":
      return self.train_images, self.train_labels
    return self.test_images, self.test_labels

  def normalize(self, images: np.ndarray) -> np.ndarray:
    """uint8 ``[..., C]`` -> float32 ``(images / 255 - mean) / std``."""
    return normalize_images(images, self.mean, self.std)


def _channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and std of uint8 images in [0, 1] units, in float64 chunks
  (CIFAR-10's training set as float64 at once would take 1.2 GB)."""
  channels = images.shape[-1]
  total = np.zeros(channels, np.float64)
  total_sq = np.zeros(channels, np.float64)
  for start in range(0, images.shape[0], chunk):
    x = images[start:start + chunk].reshape(-1, channels).astype(np.float64) / 255.0
    total += x.sum(axis=0)
    total_sq += np.square(x).sum(axis=0)
  count = images.size // channels
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
  return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)


def normalize_images(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
  """uint8 images -> float32 ``(images / 255 - mean) / std`` (per channel, last axis)."""
  x = np.asarray(images, dtype=np.float32) * np.float32(1.0 / 255.0)
  return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


# ----------------------------------------------------------------------------
# Digits (bundled)
# ----------------------------------------------------------------------------


def _interpolation_matrix(in_size: int, out_size: int, method: str) -> np.ndarray:
  """``[out_size, in_size]`` weights of 1-D resampling with half-pixel centres."""
  centers = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
  weights = np.zeros((out_size, in_size), np.float64)
  rows = np.arange(out_size)
  if method == "nearest":
    # The source pixel containing the output pixel's centre.
    idx = np.clip(np.floor((np.arange(out_size) + 0.5) * in_size / out_size).astype(int), 0, in_size - 1)
    weights[rows, idx] = 1.0
    return weights
  c = np.clip(centers, 0.0, in_size - 1.0)  # clamp to the edge pixels
  lo = np.floor(c).astype(int)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = c - lo
  np.add.at(weights, (rows, lo), 1.0 - frac)
  np.add.at(weights, (rows, hi), frac)
  return weights


def resize_images(images: np.ndarray, size: int, method: Literal["nearest", "bilinear"] = "nearest") -> np.ndarray:
  """Resizes square ``[N, H, W, C]`` images to ``[N, size, size, C]`` (float64 out).

  ``"nearest"`` copies the source pixel containing each output pixel's centre
  (for an integer factor, every pixel becomes a ``factor x factor`` block);
  ``"bilinear"`` interpolates with half-pixel centres and clamped edges, as
  ``jax.image.resize(..., "bilinear")`` does when upsampling.
  """
  _validation.check_one_of("method", method, ("nearest", "bilinear"))
  _validation.check_positive_int("size", size)
  images = np.asarray(images, np.float64)
  wh = _interpolation_matrix(images.shape[1], size, method)
  ww = _interpolation_matrix(images.shape[2], size, method)
  return np.einsum("ph,nhwc,qw->npqc", wh, images, ww, optimize=True)


def _read_digits() -> tuple[np.ndarray, np.ndarray]:
  resource = importlib.resources.files("optstab.wrn").joinpath(_DIGITS_RESOURCE)
  with resource.open("rb") as raw, gzip.open(raw, "rt") as f:
    table = np.loadtxt(f, delimiter=",", dtype=np.int64)
  images = table[:, :64].reshape(-1, 8, 8, 1)
  labels = table[:, 64].astype(np.int32)
  return images, labels


def _stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  train, test = [], []
  for c in np.unique(labels):
    idx = rng.permutation(np.flatnonzero(labels == c))
    n_test = int(round(test_fraction * len(idx)))
    test.append(idx[:n_test])
    train.append(idx[n_test:])
  return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def load_digits(
    image_size: int = 32,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    resize_method: Literal["nearest", "bilinear"] = "bilinear",
    augmentation: Augmentation | None = None,
) -> ImageDataset:
  """The bundled UCI hand-written digits as an :class:`ImageDataset` (no network, no scikit-learn).

  The 1797 8x8 images (pixels 0..16) are rescaled to 0..255, resized to
  ``image_size`` and rounded to uint8 (one channel); the split is stratified by
  class and fixed by ``seed``.

  Args:
    image_size: output height and width, >= 8 (8 keeps the originals; 32 fits the
      reference WideResNet's 8x8 pooling head, 16 needs
      ``head="global_pool"`` or a stride-1 group, see :mod:`optstab.wrn.model`).
    test_fraction: fraction of each class held out for the test split, in (0, 1).
    seed: seed of the split.
    resize_method: ``"bilinear"`` (smooth strokes) or ``"nearest"`` (blocks).
    augmentation: the default training augmentation; ``None`` means random
      crops with ``image_size // 8`` pixels of padding and no flips (a mirrored
      digit is another symbol).

  Returns:
    An ``ImageDataset`` named ``"digits"`` with 10 classes (about 1437 training
    and 360 test images for ``test_fraction=0.2``).
  """
  _validation.check_positive_int("image_size", image_size, minimum=8)
  _validation.check_in_range("test_fraction", test_fraction, 0.0, 1.0, low_inclusive=False)
  _validation.check_positive_int("seed", seed, minimum=0)
  _validation.check_one_of("resize_method", resize_method, ("nearest", "bilinear"))
  images, labels = _read_digits()
  x = images * (255.0 / 16.0)
  if image_size != 8:
    x = resize_images(x, image_size, resize_method)
  x = np.clip(np.rint(x), 0, 255).astype(np.uint8)
  train_idx, test_idx = _stratified_split(labels, test_fraction, seed)
  mean, std = _channel_stats(x[train_idx])
  if augmentation is None:
    augmentation = Augmentation(crop_padding=image_size // 8, horizontal_flip=False)
  return ImageDataset(
      name="digits",
      train_images=x[train_idx], train_labels=labels[train_idx],
      test_images=x[test_idx], test_labels=labels[test_idx],
      num_classes=10, mean=mean, std=std, augmentation=augmentation)


# ----------------------------------------------------------------------------
# CIFAR-10
# ----------------------------------------------------------------------------


def default_data_dir() -> pathlib.Path:
  """``$OPTSTAB_DATA_DIR`` if set, else ``~/.cache/optstab``."""
  env = os.environ.get(_DATA_DIR_ENV)
  return pathlib.Path(env).expanduser() if env else pathlib.Path("~/.cache/optstab").expanduser()


def md5sum(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
  """Hex MD5 digest of a file, read in chunks."""
  digest = hashlib.md5(usedforsecurity=False)
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(chunk_size), b""):
      digest.update(chunk)
  return digest.hexdigest()


def verify_md5(path: str | os.PathLike, expected: str) -> None:
  """Raises :class:`ChecksumError` unless ``path``'s MD5 is ``expected``."""
  actual = md5sum(path)
  if actual.lower() != expected.lower():
    raise ChecksumError(
        f"MD5 checksum mismatch for {os.fspath(path)}: expected {expected}, got {actual}. "
        "The file is corrupt or incomplete; delete it and download it again.")


def download_url(url: str, path: str | os.PathLike, *, timeout: float = 60.0) -> None:
  """Downloads ``url`` to ``path`` (streamed; the default downloader)."""
  with urllib.request.urlopen(url, timeout=timeout) as response, open(path, "wb") as f:
    shutil.copyfileobj(response, f, length=1 << 20)


def _find_cifar10(data_dir: pathlib.Path) -> pathlib.Path | None:
  """The directory holding the batches: ``data_dir/cifar-10-batches-py`` or ``data_dir`` itself."""
  for candidate in (data_dir / CIFAR10_DIRNAME, data_dir):
    if all((candidate / name).is_file() for name in CIFAR10_TRAIN_FILES + (CIFAR10_TEST_FILE,)):
      return candidate
  return None


def _missing_message(data_dir: pathlib.Path, reason: str) -> str:
  return (
      f"CIFAR-10 not found in {data_dir} (looked for {data_dir / CIFAR10_DIRNAME}/"
      f"data_batch_1..5 and {CIFAR10_TEST_FILE}): {reason}. To get it, on a machine with "
      f"network run `curl -O {CIFAR10_URL}` (MD5 {CIFAR10_MD5}) and "
      f"`tar -xzf {CIFAR10_ARCHIVE} -C {data_dir}`, or call load_cifar10(data_dir=...) with "
      f"download=True there; set {_DATA_DIR_ENV} or pass data_dir to use another directory. "
      "For a fully offline run use load_digits(), or from the command line "
      "`optstab-wrn --preset quick` (bundled digits, CPU, a few minutes).")


def _safe_extract(archive: pathlib.Path, dest: pathlib.Path) -> None:
  with tarfile.open(archive, "r:gz") as tar:
    if hasattr(tarfile, "data_filter"):
      try:
        tar.extractall(dest, filter="data")
      except tarfile.FilterError as e:
        raise ValueError(f"Refusing to extract {archive}: {e}") from e
    else:  # Python < 3.11.4: refuse absolute paths and parent references.
      root = dest.resolve()
      for member in tar.getmembers():
        target = (dest / member.name).resolve()
        if root not in target.parents and target != root:
          raise ValueError(f"Refusing to extract {member.name!r} outside {dest}.")
        if member.issym() or member.islnk():
          raise ValueError(f"Refusing to extract link {member.name!r}.")
      tar.extractall(dest)


def fetch_cifar10(
    data_dir: str | os.PathLike | None = None,
    *,
    url: str = CIFAR10_URL,
    md5: str = CIFAR10_MD5,
    downloader: Callable[[str, pathlib.Path], None] | None = None,
) -> pathlib.Path:
  """Makes sure the CIFAR-10 python batches are in ``data_dir``; returns their directory.

  Already extracted batches are used as they are. Otherwise the archive
  ``data_dir/cifar-10-python.tar.gz`` is used if present, else downloaded with
  ``downloader(url, path)`` (default :func:`download_url`); in both cases its MD5
  is verified before it is extracted (safely) into ``data_dir``.

  Raises:
    DataNotFoundError: the download failed (no network); the message explains
      how to get the data by hand.
    ChecksumError: the archive's MD5 is not ``md5`` (a downloaded archive is
      deleted first; a pre-existing one is left for inspection).
    ValueError: the archive has members that would land outside ``data_dir``
      (absolute paths, ``..``, links pointing out).
  """
  data_dir = pathlib.Path(data_dir) if data_dir is not None else default_data_dir()
  found = _find_cifar10(data_dir)
  if found is not None:
    return found
  data_dir.mkdir(parents=True, exist_ok=True)
  archive = data_dir / CIFAR10_ARCHIVE
  if not archive.is_file():
    downloader = download_url if downloader is None else downloader
    fd, partial = tempfile.mkstemp(prefix=CIFAR10_ARCHIVE + ".", suffix=".part", dir=data_dir)
    os.close(fd)
    partial = pathlib.Path(partial)
    try:
      downloader(url, partial)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
      partial.unlink(missing_ok=True)
      raise DataNotFoundError(_missing_message(data_dir, f"downloading {url} failed ({e})")) from e
    except BaseException:  # e.g. KeyboardInterrupt: no half-written file left behind
      partial.unlink(missing_ok=True)
      raise
    try:
      verify_md5(partial, md5)
    except ChecksumError:
      partial.unlink(missing_ok=True)
      raise
    os.replace(partial, archive)
  else:
    verify_md5(archive, md5)
  _safe_extract(archive, data_dir)
  found = _find_cifar10(data_dir)
  if found is None:
    raise DataNotFoundError(_missing_message(data_dir, f"{archive} did not contain the python batches"))
  return found


class _ArrayUnpickler(pickle.Unpickler):
  """Unpickles only plain containers and NumPy arrays (the CIFAR batch format).

  A pickle can run arbitrary code when loaded; this refuses every global other
  than the few NumPy needs to rebuild an array.
  """

  _ALLOWED = {
      ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
      ("numpy", "ndarray"), ("numpy", "dtype"),
      ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
  }

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) in self._ALLOWED:
      return super().find_class(module, name)
    raise pickle.UnpicklingError(f"CIFAR batch files may only contain arrays; refusing {module}.{name}.")


def load_cifar10_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
  """Reads one CIFAR-10 python batch: uint8 images ``[N, 32, 32, 3]`` and int32 labels ``[N]``.

  The file is a pickle of a dict with ``b"data"`` (uint8 ``[N, 3072]``: 1024 red,
  then 1024 green, then 1024 blue values, each a row-major 32x32 plane) and
  ``b"labels"`` (N ints in 0..9).
  """
  with open(path, "rb") as f:
    batch = _ArrayUnpickler(f, encoding="bytes").load()
  if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
    raise ValueError(f"{os.fspath(path)} is not a CIFAR-10 python batch (no b'data'/b'labels').")
  data = np.asarray(batch[b"data"])
  labels = np.asarray(batch[b"labels"], dtype=np.int64)
  if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (data.shape[0],):
    raise ValueError(f"{os.fspath(path)}: expected uint8 data [N, 3072] and N labels; "
                     f"got data {data.dtype}{list(data.shape)} and {labels.shape[0]} labels.")
  if labels.size and (labels.min() < 0 or labels.max() > 9):
    raise ValueError(f"{os.fspath(path)}: labels must be in 0..9.")
  images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels.astype(np.int32)


def load_cifar10(
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
    downloader: Callable[[str, pathlib.Path], None] | None = None,
    augmentation: Augmentation | None = None,
) -> ImageDataset:
  """CIFAR-10 (50,000 train / 10,000 test 32x32x3 images) as an :class:`ImageDataset`.

  Args:
    data_dir: directory holding ``cifar-10-batches-py/`` (or the batches
      themselves); default :func:`default_data_dir` (``$OPTSTAB_DATA_DIR`` or
      ``~/.cache/optstab``).
    download: when the batches are missing, download (and MD5-check) the
      archive from ``CIFAR10_URL`` into ``data_dir``; ``False`` fails instead.
    downloader: ``downloader(url, path)`` replacing :func:`download_url`.
    augmentation: default training augmentation; ``None`` means the standard
      4-pixel-padded random crop and horizontal flip.

  Raises:
    DataNotFoundError: the batches are missing and could not be downloaded; the
      message names the directory and how to get the data.
    ChecksumError: the archive is corrupt.
  """
  root = pathlib.Path(data_dir) if data_dir is not None else default_data_dir()
  found = _find_cifar10(root)
  if found is None:
    if not download:
      raise DataNotFoundError(_missing_message(root, "download=False"))
    found = fetch_cifar10(root, downloader=downloader)
  train = [load_cifar10_batch(found / name) for name in CIFAR10_TRAIN_FILES]
  test_images, test_labels = load_cifar10_batch(found / CIFAR10_TEST_FILE)
  train_images = np.concatenate([b[0] for b in train])
  train_labels = np.concatenate([b[1] for b in train])
  mean, std = _channel_stats(train_images)
  if augmentation is None:
    augmentation = Augmentation(crop_padding=4, horizontal_flip=True)
  return ImageDataset(
      name="cifar10", train_images=train_images, train_labels=train_labels,
      test_images=test_images, test_labels=test_labels, num_classes=10,
      mean=mean, std=std, augmentation=augmentation)


# ----------------------------------------------------------------------------
# Input pipeline
# ----------------------------------------------------------------------------


class Batch(NamedTuple):
  """One batch (a pytree, so ``jax.device_put`` and ``jax.jit`` take it as is).

  Attributes:
    images: float32 ``[B, H, W, C]``, normalized.
    labels: int32 ``[B]``.
    mask: float32 ``[B]``: 1 for real examples, 0 for padding (``remainder="pad"``).
  """

  images: Any
  labels: Any
  mask: Any


def augment_images(images: np.ndarray, rng: np.random.Generator, augmentation: Augmentation) -> np.ndarray:
  """Random crop (after zero padding) and/or horizontal flip of ``[B, H, W, C]`` images.

  Every image gets its own crop offset in ``[0, 2 * crop_padding]`` per axis and
  its own coin for the flip, all drawn from ``rng`` (so a seeded generator gives
  the same result). Shape and dtype are preserved.
  """
  images = np.asarray(images)
  b, h, w, _ = images.shape
  out = images
  p = augmentation.crop_padding
  if p:
    padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
    dy = rng.integers(0, 2 * p + 1, size=b)
    dx = rng.integers(0, 2 * p + 1, size=b)
    rows = dy[:, None] + np.arange(h)[None, :]  # [B, H]
    cols = dx[:, None] + np.arange(w)[None, :]  # [B, W]
    out = padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]
  if augmentation.horizontal_flip:
    flip = rng.random(b) < 0.5
    out = np.where(flip[:, None, None, None], out[:, :, ::-1], out)
  return np.ascontiguousarray(out)


_REMAINDERS = ("drop", "pad", "keep")


def num_batches(num_examples: int, batch_size: int, remainder: str = "drop") -> int:
  """Batches per epoch: ``floor`` for ``"drop"``, ``ceil`` for ``"pad"``/``"keep"``."""
  _validation.check_one_of("remainder", remainder, _REMAINDERS)
  return num_examples // batch_size if remainder == "drop" else -(-num_examples // batch_size)


def epoch_batches(
    dataset: ImageDataset,
    split: Literal["train", "test"] = "train",
    batch_size: int = 128,
    *,
    epoch: int = 0,
    seed: int = 0,
    shuffle: bool | None = None,
    augmentation: Augmentation | Literal["default"] | None = "default",
    remainder: Literal["drop", "pad", "keep"] | None = None,
) -> Iterator[Batch]:
  """The batches of one epoch; deterministic in ``(seed, epoch)``.

  Args:
    dataset: an :class:`ImageDataset`.
    split: ``"train"`` or ``"test"``.
    batch_size: examples per batch.
    epoch: epoch number; the shuffle order and augmentation draws come from
      ``np.random.default_rng((seed, epoch))``, so any epoch can be replayed.
    seed: base seed.
    shuffle: default ``True`` for train, ``False`` for test.
    augmentation: ``"default"`` (the data set's own for train, none for test),
      ``None`` (none) or an :class:`Augmentation`.
    remainder: a last partial batch is dropped (``"drop"``, default for train),
      padded to ``batch_size`` with masked copies of the first examples
      (``"pad"``, default for test: static shapes for ``jax.jit``), or yielded
      smaller (``"keep"``).
  """
  _validation.check_one_of("split", split, ("train", "test"))
  _validation.check_positive_int("batch_size", batch_size)
  _validation.check_positive_int("epoch", epoch, minimum=0)
  _validation.check_positive_int("seed", seed, minimum=0)
  training = split == "train"
  shuffle = training if shuffle is None else shuffle
  remainder = ("drop" if training else "pad") if remainder is None else remainder
  _validation.check_one_of("remainder", remainder, _REMAINDERS)
  if augmentation == "default":
    augmentation = dataset.augmentation if training else None
  elif augmentation is not None and not isinstance(augmentation, Augmentation):
    raise ValueError(f"augmentation must be 'default', None or an Augmentation; got {augmentation!r}.")
  images, labels = dataset.split(split)
  n = images.shape[0]
  rng = np.random.default_rng((seed, epoch))
  order = rng.permutation(n) if shuffle else np.arange(n)
  for i in range(num_batches(n, batch_size, remainder)):
    idx = order[i * batch_size:(i + 1) * batch_size]
    valid = len(idx)
    if valid < batch_size and remainder == "pad":
      idx = np.concatenate([idx, np.resize(order, batch_size - valid)])
    x = images[idx]
    if augmentation is not None and augmentation.enabled:
      x = augment_images(x, rng, augmentation)
    mask = np.zeros(len(idx), np.float32)
    mask[:valid] = 1.0
    yield Batch(images=dataset.normalize(x), labels=labels[idx].astype(np.int32), mask=mask)


def batch_iterator(
    dataset: ImageDataset,
    split: Literal["train", "test"] = "train",
    batch_size: int = 128,
    *,
    seed: int = 0,
    num_epochs: int | None = None,
    start_epoch: int = 0,
    shuffle: bool | None = None,
    augmentation: Augmentation | Literal["default"] | None = "default",
    remainder: Literal["drop", "pad", "keep"] | None = None,
) -> Iterator[Batch]:
  """Batches of epochs ``start_epoch, start_epoch + 1, ...`` (forever if ``num_epochs`` is None).

  Each epoch is :func:`epoch_batches` with its own epoch number, so the stream
  is reproducible from ``seed`` and can resume at any epoch. Take a number of
  steps with ``itertools.islice(batch_iterator(...), num_steps)``.
  """
  _validation.check_positive_int("start_epoch", start_epoch, minimum=0)
  if num_epochs is not None:
    _validation.check_positive_int("num_epochs", num_epochs)
  images, _ = dataset.split(split)
  rem = ("drop" if split == "train" else "pad") if remainder is None else remainder
  if num_batches(images.shape[0], batch_size, rem) == 0:
    raise ValueError(f"batch_size must be at most the {split} split's size ({images.shape[0]}) "
                     f"with remainder='drop'; got {batch_size}.")
  epoch = start_epoch
  while num_epochs is None or epoch < start_epoch + num_epochs:
    yield from epoch_batches(dataset, split, batch_size, epoch=epoch, seed=seed, shuffle=shuffle,
                             augmentation=augmentation, remainder=remainder)
    epoch += 1
