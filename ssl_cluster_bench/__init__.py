"""ssl_cluster_bench: benchmark image backbones by clustering their frozen features.

Pipeline (one module per stage): data -> backbones -> extract (feature cache) -> reduce -> cluster / heads
-> metrics -> leaderboard. ``ssl_cluster_bench.api`` ties them together the way the ``sscb`` CLI does.
"""
from .version import __version__  # noqa: E402  (one place; modules import it from there)

from .assignments import assignment_table, write_assignments  # noqa: E402
from .api import cluster_entries, cluster_entry, cluster_features, extract, import_features, run  # noqa: E402
from .methods import get_method, list_methods, register_method  # noqa: E402
from .metrics import cluster_accuracy, evaluate  # noqa: E402
from .protocol import KMeansSettings, Protocol  # noqa: E402
from .report import write_report  # noqa: E402
from .specs import BackboneSpec, ExtractSettings  # noqa: E402
from .suite import load_suite, run_suite  # noqa: E402

__all__ = ["__version__", "BackboneSpec", "ExtractSettings", "KMeansSettings", "Protocol", "assignment_table",
           "cluster_accuracy", "cluster_entries", "cluster_entry", "cluster_features", "evaluate", "extract",
           "get_method", "import_features", "list_methods", "load_suite", "register_method", "run", "run_suite",
           "write_assignments", "write_report"]
