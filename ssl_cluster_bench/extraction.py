"""Extract: run a frozen backbone once over a dataset and store float16 features in the feature cache.

Entry point:
    extract_features(backbone, dataset, cache=None, batch_size=128, ...) -> CacheEntry

The dataset is processed in chunks of ``chunk_size`` positions; each finished chunk is written atomically,
so a killed run resumes with the unfinished chunks only, and memory stays flat whatever the dataset size.
Under ``torchrun`` every rank extracts the chunks ``i`` with ``i % world_size == rank`` (no padded
duplicates) and rank 0 assembles the entry. Independent jobs asking for the same entry at once share its
chunks: each claims the next chunk no one holds and waits for the rest (see :mod:`.cache`). Unreadable
images are skipped, counted and listed in the manifest. Optionally, ``views=V`` stores V seeded
strongly-augmented views per image in a separate entry (for self-labeling heads).
"""
from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import copy
import functools
import hashlib
import itertools
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .cache import CacheEntry, CacheKey, FeatureCache
from .specs import ExtractSettings, extract_settings

__all__ = ["augmentation_transform", "cache_key_for", "data_source", "dataset_fingerprint", "distributed_ranks",
           "extract_features"]

log = logging.getLogger(__name__)


FINGERPRINT_FORMAT = 2  # 1: names, classes and labels only (before sizes, times and the root were keyed)
_STAT_BATCH = 4096


def _file_digest(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as e:
        return f"unreadable:{e.errno}"  # extraction skips it as unreadable; a later fix changes the key


def _file_stat(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError as e:
        return f"unreadable:{e.errno}"
    return f"{st.st_size}:{st.st_mtime_ns}"


def data_source(dataset, verify_content: bool = False) -> dict:
    """Where a dataset's pixels come from, as recorded in its cache entries' manifests: the resolved root and
    how its files are fingerprinted ("stat": sizes and times, "content": bytes, "none": no files)."""
    root = getattr(dataset, "root", None)
    kind = "none" if not hasattr(dataset, "data_files") else "content" if verify_content else "stat"
    return {"format": FINGERPRINT_FORMAT, "root": str(Path(root).resolve()) if root is not None else "",
            "fingerprint": kind}


def dataset_fingerprint(dataset, verify_content: bool = False, progress: bool = False) -> str:
    """Hash of what decides a dataset's pixels and labels, so that a cache entry follows the data.

    Always: the size, classes, labels and a spread of sample ids. For datasets read from files
    (``dataset.data_files()``: every image of an image folder; the data files of CIFAR, STL-10, MNIST): the
    resolved root and, per file, its path relative to the root, size and modification time (ns), so that a
    rewritten image or a second folder with the same file names never finds old features. With
    ``verify_content`` each file's sha256 replaces its modification time (for copies or filesystems whose
    mtimes cannot be trusted); that reads every byte (see benchmarks/README.md for both costs).
    """
    n = len(dataset)
    probe = np.unique(np.linspace(0, n - 1, num=min(n, 512)).astype(np.int64)) if n else []
    h = hashlib.sha256()
    h.update(json.dumps([n, list(map(str, dataset.classes)), [dataset.sample_id(int(i)) for i in probe]]).encode())
    h.update(np.ascontiguousarray(np.asarray(dataset.targets, dtype=np.int64)).tobytes())
    files = getattr(dataset, "data_files", None)
    if files is None:  # data shipped inside a package (digits): nothing on disk to follow
        return h.hexdigest()[:16]
    h.update(json.dumps(data_source(dataset, verify_content)).encode())
    describe = _file_digest if verify_content else _file_stat
    bar = tqdm(total=len(dataset) if hasattr(dataset, "path") else None, unit="file", leave=False,
               desc=f"hash {dataset.name}/{dataset.split}", disable=not (progress and verify_content))
    # sha256 and reads release the GIL: a few threads keep a disk (or a network filesystem) busy
    workers = min(8, os.cpu_count() or 1) if verify_content else 1
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        batch: list[tuple[str, str]] = []
        for item in itertools.chain(files(), [None]):
            if item is not None:
                batch.append(item)
                if len(batch) < _STAT_BATCH:
                    continue
            paths = [p for _, p in batch]
            described = pool.map(describe, paths) if workers > 1 else map(describe, paths)
            h.update("".join(f"{rel}\0{d}\n" for (rel, _), d in zip(batch, described)).encode())
            bar.update(len(batch))
            batch = []
    bar.close()
    return h.hexdigest()[:16]


def cache_key_for(backbone, dataset, variant: str = "", verify_content: bool = False,
                  progress: bool = False) -> CacheKey:
    """The cache key of ``backbone`` features on ``dataset`` (same key <=> same weights, data, preprocessing)."""
    return CacheKey(backbone=backbone.card.id, dataset=dataset.name, split=dataset.split,
                    weights=backbone.weights_id, transform=backbone.transform_id, variant=variant,
                    data=dataset_fingerprint(dataset, verify_content, progress))


def _collate(batch, dataset=None):
    kept = [b for b in batch if b[0] is not None]
    skipped = [int(b[2]) for b in batch if b[0] is None]
    if kept:
        odd = next((b for b in kept if b[0].shape != kept[0][0].shape), None)
        if odd is not None:  # only a card that neither resizes nor crops (pixels) keeps each image's size
            def name(b):
                return repr(dataset.sample_id(int(b[2]))) if dataset is not None else f"sample {int(b[2])}"
            raise ValueError(
                f"images of different sizes reach the backbone ({name(kept[0])} is "
                f"{'x'.join(map(str, kept[0][0].shape))}, {name(odd)} is {'x'.join(map(str, odd[0].shape))}): "
                "the backbone's preprocessing keeps each image's own size; bring the images to one size first, or "
                "use a card whose preprocessing resizes (preprocessing.resize)")
        images = torch.stack([b[0] for b in kept])
        labels = torch.tensor([int(b[1]) for b in kept], dtype=torch.int64)
        index = torch.tensor([int(b[2]) for b in kept], dtype=torch.int64)
    else:
        images, labels, index = None, torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64)
    return images, labels, index, skipped


class _SeededView(torch.utils.data.Dataset):
    """Applies a random transform with a seed fixed by (seed, view, index): same views on every re-run."""

    def __init__(self, dataset, transform, seed: int, view: int):
        self.dataset = copy.copy(dataset)
        self.dataset.transform = None
        self.transform, self.seed, self.view = transform, seed, view

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        image, label, index = self.dataset[i]
        if image is None:
            return None, label, index
        digest = hashlib.blake2b(f"{self.seed}:{self.view}:{i}".encode(), digest_size=8).digest()
        state = torch.random.get_rng_state()
        torch.manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))
        try:
            return self.transform(image), label, index
        finally:
            torch.random.set_rng_state(state)


def augmentation_transform(backbone, sample_image, num_ops: int = 2, magnitude: int = 10):
    """Strong augmentation matching the backbone's eval transform: random resized crop + flip + RandAugment
    on the PIL image, then the eval transform's own tensor conversion and normalisation.

    Derived from the eval pipeline (probed on ``sample_image``) so the output size and normalisation always
    match what the weights expect.
    """
    from torchvision import transforms as T

    steps = list(getattr(backbone.transform, "transforms", []))
    tensor_at = next((i for i, t in enumerate(steps) if isinstance(t, (T.ToTensor, T.PILToTensor))), None)
    if tensor_at is None:
        raise ValueError(f"cannot derive an augmentation from the transform of {backbone.card.id}: "
                         "it is not a torchvision Compose with a ToTensor step")
    height, width = T.Compose(steps[:tensor_at])(sample_image).size[::-1]
    pil_only = [t for t in steps[:tensor_at] if not isinstance(t, (T.Resize, T.CenterCrop))]
    return T.Compose([T.RandomResizedCrop((height, width), scale=(0.2, 1.0), antialias=True),
                      T.RandomHorizontalFlip(), T.RandAugment(num_ops=num_ops, magnitude=magnitude),
                      *pil_only, *steps[tensor_at:]])


class _Sources(torch.utils.data.Dataset):
    """Position ``v * n + i`` is sample ``i`` of source ``v`` (plain pass, or augmented view ``v``)."""

    def __init__(self, sources):
        self.sources, self.n = sources, len(sources[0])

    def __len__(self):
        return self.n * len(self.sources)

    def __getitem__(self, j):
        v, i = divmod(j, self.n)
        return self.sources[v][i]


def distributed_ranks():
    """(rank, world_size, local_rank); initialises torch.distributed under torchrun, never otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _resolve_device(device: str, local_rank: int) -> torch.device:
    if device == "auto":
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def extract_features(backbone, dataset, cache: FeatureCache | None = None, settings: ExtractSettings | None = None,
                     *, progress: bool = True, **options) -> CacheEntry:
    """Features of ``backbone`` (a :class:`~ssl_cluster_bench.backbones.Backbone`) on ``dataset``.

    ``settings`` (:class:`~ssl_cluster_bench.specs.ExtractSettings`: batch size, workers, device, chunk size,
    views, amp, ...; None = the defaults); keyword ``options`` replace its fields
    (``extract_features(bb, ds, batch_size=8)``).
    Returns the cache entry, computing only what the cache lacks. ``views > 0`` returns instead the entry
    of ``views`` augmented views per image (features shape (views, n, dim)).
    ``amp``: autocast on CUDA ("auto": bf16 where supported, else fp16); never on CPU.
    The entry is keyed on the data files' sizes and modification times (:func:`dataset_fingerprint`);
    ``verify_content=True`` keys it on their bytes instead (reads every file once per call).
    """
    settings = extract_settings(settings, **options)
    batch_size, num_workers, chunk_size, device = (settings.batch_size, settings.num_workers, settings.chunk_size,
                                                   settings.device)
    amp, channels_last, views, augment_seed = (settings.amp, settings.channels_last, settings.views,
                                               settings.augment_seed)
    verify_content = settings.verify_content
    cache = cache or FeatureCache()
    n = len(dataset)
    if n == 0:
        raise ValueError(f"dataset {dataset.name}/{dataset.split} is empty")
    variant = f"aug:randaugment-n2-m10:views={views}:seed={augment_seed}" if views else ""
    key = cache_key_for(backbone, dataset, variant, verify_content, progress)
    entry = cache.get(key)
    if entry is not None:
        return entry
    source = data_source(dataset, verify_content)
    _explain_other_data(cache, key, source)

    rank, world, local_rank = distributed_ranks()
    dev = _resolve_device(device, local_rank)
    model = backbone.model.to(dev).eval()
    use_cl = (dev.type == "cuda") if channels_last == "auto" else bool(channels_last)
    if use_cl:
        model = model.to(memory_format=torch.channels_last)
    if amp == "auto":
        amp = dev.type == "cuda"
    amp_dtype = torch.bfloat16 if (dev.type == "cuda" and torch.cuda.is_bf16_supported()) else torch.float16
    autocast = (lambda: torch.autocast(device_type=dev.type, dtype=amp_dtype)) if amp and dev.type == "cuda" \
        else contextlib.nullcontext

    if num_workers is None:
        num_workers = 0 if n < 5000 else min(8, max(1, (os.cpu_count() or 2) - 1))
    loader_options = {"num_workers": num_workers, "collate_fn": functools.partial(_collate, dataset=dataset),
                      "pin_memory": dev.type == "cuda"}

    def run_model(images):
        images = images.to(dev, non_blocking=True)
        if use_cl and images.ndim == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast():
            return model(images).float().cpu().numpy()

    with cache.writer(key, n, chunk_size) as writer:
        mine = [i for i in range(writer.n_chunks) if i % world == rank]
        sources, bar, start, counts = None, None, time.perf_counter(), [0, 0]  # [chunks, images] computed here
        off_bar: set[int] = set()
        try:
            # Other jobs may be extracting the same entry: take chunks one by one as they are free, then wait
            # for the ones others hold (retaking any whose holder died) until every chunk is done.
            while True:
                pending = [i for i in mine if not writer.is_done(i)]
                if not pending or writer.entry_complete():
                    break
                if sources is None:
                    sources = _sources(backbone, dataset, views, augment_seed)
                    bar = tqdm(total=sum(len(writer.chunk_range(i)) for i in pending) * len(sources), unit="img",
                               disable=not progress or rank != 0, smoothing=0.1,
                               desc=f"extract {backbone.card.id} on {dataset.name}/{dataset.split}"
                                    + (f" ({views} views)" if views else ""))
                if _extract_pass(writer, pending, sources, batch_size, loader_options, run_model, bar, dataset,
                                 counts, off_bar) == 0:
                    waiting = next((i for i in pending if not writer.is_done(i)), None)
                    if waiting is not None:
                        bar.set_postfix_str(f"waiting for chunk {waiting} (another job computes it)")
                        log.info("waiting for another job computing chunk %d of %s", waiting, key.entry_id)
                        writer.wait(waiting)
                        bar.set_postfix_str("")
        finally:
            if bar is not None:
                bar.close()
                elapsed = time.perf_counter() - start
                log.info("extracted %d chunk(s), %d images in %.1fs (%.1f img/s)", counts[0], counts[1], elapsed,
                         counts[1] / max(elapsed, 1e-9))

        _barrier(world)
        if rank == 0:
            entry = writer.finalize({"n_views": views, "card": backbone.card.id, "data_source": source})
        _barrier(world)
        if rank != 0:
            entry = cache.get(key)
    return entry


def _explain_other_data(cache: FeatureCache, key: CacheKey, source: dict) -> None:
    """Say why entries of the same backbone, dataset and split are not reused: they were made from other data."""
    for other in cache.find(key.backbone, key.dataset, key.split, key.variant):
        k = other.key
        if (k.weights, k.transform) != (key.weights, key.transform) or k.data == key.data:
            continue
        made = other.manifest.get("data_source") or {}
        if made.get("root") and made["root"] != source["root"]:
            log.info("extracting %s on %s/%s from %s; %s holds the features of another folder (%s) and stays as "
                     "it is", key.backbone, key.dataset, key.split, source["root"], other.name, made["root"])
            continue
        if not made:
            why = ("it was made by an older sscb that keyed entries on file names and labels only, so it may hold "
                   "features of images changed since")
        elif made.get("fingerprint") != source["fingerprint"]:
            how = {"content": "bytes", "stat": "sizes and times"}
            why = (f"it was keyed on the files' {how.get(made.get('fingerprint'), '?')} and this run keys on their "
                   f"{how.get(source['fingerprint'], '?')} (--verify-content / verify_content=True)")
        else:
            why = (f"the files under {source['root'] or key.dataset} changed since it was made "
                   f"({'bytes' if source['fingerprint'] == 'content' else 'sizes or modification times'} differ), "
                   "or another selection of them (classes, subset) is used")
        log.warning("extracting %s on %s/%s again: the cache entry %s is not reused because %s. Remove it with "
                    "`sscb cache --remove %s` once nothing needs it.", key.backbone, key.dataset, key.split,
                    other.name, why, other.name)


def _sources(backbone, dataset, views: int, augment_seed: int) -> list:
    """The datasets to run: the plain one, or ``views`` seeded augmented views of it."""
    if not views:
        return [dataset]
    sample = next(img for img, _, _ in (_SeededView(dataset, lambda x: x, 0, 0)[i] for i in range(len(dataset)))
                  if img is not None)
    augment = augmentation_transform(backbone, sample)
    return [_SeededView(dataset, augment, augment_seed, v) for v in range(views)]


class _ClaimingBatches:
    """Batch sampler over chunks that claims each chunk just before yielding its first batch.

    Chunks that are done or held by another job are skipped (and taken off the progress bar). Batches never
    straddle a chunk or a view, so a chunk is complete after its last view's last batch; ``plan`` holds
    (chunk, view, is_last) for every yielded batch, consumed in order by the caller (the DataLoader keeps order).
    """

    def __init__(self, writer, chunks, n_sources: int, n: int, batch_size: int, bar, off_bar: set):
        self.writer, self.chunks, self.n_sources, self.n, self.batch_size, self.bar = \
            writer, chunks, n_sources, n, batch_size, bar
        self.off_bar = off_bar  # chunks taken off the bar's total (shared across passes)
        self.plan = collections.deque()
        self.claims = {}

    def __iter__(self):
        for i in self.chunks:
            r = self.writer.chunk_range(i)
            claim = self.writer.claim(i)
            if (claim is None) != (i in self.off_bar):  # skipped now, or taken over from a job that died
                self.bar.total += (-1 if claim is None else 1) * len(r) * self.n_sources
                self.bar.refresh()
                (self.off_bar.add if claim is None else self.off_bar.discard)(i)
            if claim is None:
                continue
            self.claims[i] = claim
            for v in range(self.n_sources):
                for s in range(0, len(r), self.batch_size):
                    self.plan.append((i, v, s + self.batch_size >= len(r) and v == self.n_sources - 1))
                    yield [v * self.n + j for j in r[s:s + self.batch_size]]

    def release(self, i: int) -> None:
        self.claims.pop(i).release()

    def release_all(self) -> None:
        for lock in self.claims.values():
            lock.release()
        self.claims.clear()


def _extract_pass(writer, pending, sources, batch_size, loader_options, run_model, bar, dataset, counts,
                  off_bar) -> int:
    """Compute and write every pending chunk no other job holds; returns how many chunks this pass claimed.

    ``counts`` ([chunks, images] computed by this process) is updated in place."""
    sampler = _ClaimingBatches(writer, pending, len(sources), len(dataset), batch_size, bar, off_bar)
    loader = torch.utils.data.DataLoader(_Sources(sources), batch_sampler=sampler, **loader_options)
    parts = [[] for _ in sources]
    claimed = 0
    try:
        for images, labels, index, skipped in loader:
            chunk, v, last = sampler.plan.popleft()
            feats = None if images is None else run_model(images)
            parts[v].append((feats, labels.numpy(), index.numpy(), skipped))
            bar.update(len(index) + len(skipped))
            counts[1] += len(index) + len(skipped)
            if last:
                _write_chunk(writer, chunk, parts, dataset)
                sampler.release(chunk)
                claimed += 1
                counts[0] += 1
                parts = [[] for _ in sources]
    finally:
        sampler.release_all()
    return claimed


def _write_chunk(writer, chunk: int, per_source: list, dataset) -> None:
    """Concatenate the batches of one chunk (all views) and write it."""
    feats_per_view = []
    base = per_source[0]
    labels = np.concatenate([p[1] for p in base])
    indices = np.concatenate([p[2] for p in base])
    skipped = [i for p in base for i in p[3]]
    dim = next((p[0].shape[1] for parts in per_source for p in parts if p[0] is not None), 0)
    for parts in per_source:
        blocks = [p[0] for p in parts if p[0] is not None]
        idx = np.concatenate([p[2] for p in parts])
        if not np.array_equal(idx, indices):
            raise RuntimeError(f"chunk {chunk}: augmented views skipped different files than the plain pass")
        feats_per_view.append(np.concatenate(blocks) if blocks else np.zeros((0, dim), np.float32))
    features = feats_per_view[0] if len(per_source) == 1 else np.stack(feats_per_view)
    if skipped:
        log.warning("chunk %d: skipped %d unreadable file(s), e.g. %s", chunk, len(skipped),
                    dataset.sample_id(skipped[0]))
    writer.write_chunk(chunk, features, labels, indices, [dataset.sample_id(i) for i in skipped])
