"""Packaging glue; all metadata is in pyproject.toml.

The model cards live in the top-level ``model_cards/`` folder (one YAML file per backbone, edited without
touching code). Here that folder is mapped into the package as ``ssl_cluster_bench.model_cards`` so that every
install (wheel, ``pip install .``, editable) ships the cards as package data; pyproject.toml's static tables
cannot combine package discovery with such a mapping.
"""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["ssl_cluster_bench", "ssl_cluster_bench.*"]) + ["ssl_cluster_bench.model_cards"],
    package_dir={"ssl_cluster_bench.model_cards": "model_cards"},
    # _preprocessing/: the shared preprocessing blocks that cards include
    package_data={"ssl_cluster_bench.model_cards": ["*.yaml", "*.yml", "_preprocessing/*.yaml"],
                  "ssl_cluster_bench.suites": ["*.yaml"]},
)
