"""Progress bars of a run: one bar per stage, none when quiet.

Entry points:
    stage_bar(desc, total=None, unit="it", progress=True, iterable=None) -> tqdm   the one bar of a stage
    quiet() -> bool                                                   ``sscb -q`` is in force

A run (``sscb run``, ``sscb suite``, ``sscb objectnet``) shows one bar per stage: the extraction of each entry,
its reduction (PCA / UMAP), and one bar per method that advances over the method's fits (its seeds, and the k
values tried when k is picked). The loops inside a stage (k-means restarts, a head's epochs, neighbour mining)
print no bar of their own there: the runner builds its estimators with ``verbose=False`` and may put where it
is on the stage's postfix. An estimator used directly keeps its own bars with ``verbose=True``.
"""
from __future__ import annotations

import os

from tqdm.auto import tqdm

__all__ = ["quiet", "stage_bar"]


def quiet() -> bool:
    """True while ``sscb -q`` runs: it sets SSCB_QUIET=1 so that bars made far from any ``progress`` argument
    (the dataset indexing, the first hashing of a large cache entry) stay off as well."""
    return os.environ.get("SSCB_QUIET") == "1"


def stage_bar(desc: str, total: int | None = None, unit: str = "it", progress: bool = True, iterable=None) -> tqdm:
    """The one bar of a stage (use as a context manager, or iterate it over ``iterable``); disabled by
    ``progress=False`` or :func:`quiet`.

    Not left on screen when done (``leave=False``), so a long suite does not scroll; what each stage produced is
    logged and written to the leaderboard."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, disable=not progress or quiet())
