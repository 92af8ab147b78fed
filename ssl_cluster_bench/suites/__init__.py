"""Benchmark suites shipped with the package (YAML files; see ssl_cluster_bench.suite)."""
