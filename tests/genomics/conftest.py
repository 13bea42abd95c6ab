"""Fixtures of the genomics tests: one genome-index cache for the whole session, and the generated genome."""
from __future__ import annotations

from pathlib import Path

import pytest

from apps.genomics.generated import write_generated_genome
from apps.genomics.genome import Genome, load_genome



@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("genome_cache")


@pytest.fixture(scope="session")
def generated_genome(cache_dir) -> Genome:
    return load_genome(write_generated_genome(cache_dir)[0], cache_dir)
