"""Reading a Prometheus `/metrics` page in tests: every sample, keyed by name and labels."""

from __future__ import annotations

from collections import defaultdict

import httpx
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    samples: Samples = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] += sample.value
    return samples


def scrape(base_url: str) -> Samples:
    return parse(httpx.get(f"{base_url}/metrics", timeout=10).text)


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def has(samples: Samples, name: str, **labels: str) -> bool:
    """Whether any sample of ``name`` has (at least) these labels."""
    wanted = set(labels.items())
    return any(n == name and wanted <= ls for n, ls in samples)
