"""Reading a Prometheus endpoint in tests: GET it over the real socket and
parse it with prometheus-client's own parser."""

from __future__ import annotations

import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

# A sample: (name, sorted label items) -> value.
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def get(url: str, accept: str = "", headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    """(status, Content-Type, body) of GET ``url`` (with ``headers``)."""
    request = urllib.request.Request(url, headers=headers or {})
    if accept:
        request.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers["Content-Type"], exc.read().decode()


def scrape(url: str, headers: dict[str, str] | None = None) -> Samples:
    """Every sample at ``url`` (text format 0.0.4), as prometheus-client's
    parser reads them; every family has HELP text of its own."""
    status, content_type, body = get(url, headers=headers)
    assert status == 200, body
    assert content_type.startswith("text/plain; version=0.0.4"), content_type
    out: Samples = {}
    for family in text_string_to_metric_families(body):
        assert family.documentation, family.name
        assert family.documentation != family.name, family.name
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: Samples, metric: str, **labels: str) -> float:
    """The one sample ``metric`` whose labels include ``labels``."""
    found = [
        v for (n, ls), v in samples.items() if n == metric and labels.items() <= dict(ls).items()
    ]
    assert len(found) == 1, (metric, labels, found)
    return found[0]


def total(samples: Samples, metric: str, **labels: str) -> float:
    """The sum of the samples ``metric`` whose labels include ``labels``."""
    return sum(
        v for (n, ls), v in samples.items() if n == metric and labels.items() <= dict(ls).items()
    )
