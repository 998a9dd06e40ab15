"""Behind a corporate proxy, with a private CA: `batchrun run` honours HTTPS_PROXY / NO_PROXY, and
verifies the provider's TLS certificate against `--ca-bundle PATH` or SSL_CERT_FILE.

For real: the simulator serves over TLS with a certificate of its own (its own CA), and the proxy is a
real HTTP CONNECT proxy (`connect_proxy.py`) that tunnels the TLS bytes and notes each tunnel.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from connect_proxy import ConnectProxy, connect_proxy, self_signed_certificate
from conftest import Cli, batch_status, export, make_keys, provider_env, submit_jobs

from batchrun.simulator import RunningSimulator, SimulatorConfig, SimulatorThread


@pytest.fixture
def ca(tmp_path: Path) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path)


@pytest.fixture
def tls_sim(ca: tuple[Path, Path]) -> Iterator[RunningSimulator]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*ca)
    with SimulatorThread(SimulatorConfig(seed=1), ssl_context=context) as running:
        yield running


@pytest.fixture
def proxy() -> Iterator[ConnectProxy]:
    with connect_proxy() as running:
        yield running


def proxied(sim: RunningSimulator, proxy: ConnectProxy, **extra: str) -> dict[str, str]:
    return {**provider_env(sim, make_keys(1)), "HTTPS_PROXY": proxy.url, **extra}


def test_a_run_through_a_connect_proxy_to_a_tls_provider_with_a_private_ca(
        cli: Cli, tls_sim: RunningSimulator, proxy: ConnectProxy, ca: tuple[Path, Path], tmp_path: Path) -> None:
    assert tls_sim.base_url.startswith("https://127.0.0.1:")
    prompts = submit_jobs(cli, tmp_path, 12)

    result = cli("run", "--no-progress", "--ca-bundle", str(ca[0]), env=proxied(tls_sim, proxy))

    assert result.returncode == 0, result.stdout + result.stderr
    results, errors = export(cli, tmp_path)
    assert errors == [] and sorted(row["custom_id"] for row in results) == sorted(prompts)
    for row in results:
        assert row["response"]["body"]["choices"][0]["message"]["content"] == "echo: " + prompts[row["custom_id"]]
    # every connection went through the proxy, to the provider, and TLS held end to end
    assert proxy.tunnels and set(proxy.tunnels) == {f"127.0.0.1:{tls_sim.port}"} and proxy.refused == 0
    assert tls_sim.state.snapshot()["completions_ok"] == 12


def test_ssl_cert_file_is_the_ca_bundle_and_no_proxy_goes_straight_to_the_provider(
        cli: Cli, tls_sim: RunningSimulator, proxy: ConnectProxy, ca: tuple[Path, Path], tmp_path: Path) -> None:
    submit_jobs(cli, tmp_path, 5)

    result = cli("run", "--no-progress", env=proxied(tls_sim, proxy, SSL_CERT_FILE=str(ca[0]), NO_PROXY="127.0.0.1"))

    assert result.returncode == 0, result.stdout + result.stderr
    assert batch_status(cli)["succeeded"] == 5
    assert proxy.tunnels == [] and proxy.refused == 0  # NO_PROXY: not a byte through the proxy


def test_an_untrusted_certificate_exits_5_at_once_and_names_the_ca_bundle(
        cli: Cli, tls_sim: RunningSimulator, proxy: ConnectProxy, tmp_path: Path) -> None:
    submit_jobs(cli, tmp_path, 3)

    result = cli("run", "--no-progress", env=proxied(tls_sim, proxy))

    assert result.returncode == 5, result.stdout + result.stderr
    assert "is not trusted" in result.stderr and "--ca-bundle PATH" in result.stderr
    assert "trying again" not in result.stderr  # a certificate is not a blip to wait out
    assert len(proxy.tunnels) == 1  # it did go through the proxy, and stopped at the handshake
    assert tls_sim.state.snapshot()["models_requests"] == 0
    assert batch_status(cli)["queued"] == 3


def test_a_ca_bundle_that_is_not_a_file_is_a_usage_error(cli: Cli, tmp_path: Path) -> None:
    submit_jobs(cli, tmp_path, 1)

    result = cli("run", "--ca-bundle", str(tmp_path / "missing.pem"),
                 env={"BATCHRUN_BASE_URL": "https://127.0.0.1:9/v1", "BATCHRUN_API_KEYS": "a:b"})

    assert result.returncode == 2, result.stderr
    assert "missing.pem is not a file" in result.stderr


def test_http_proxy_carries_the_requests_to_an_http_provider(cli: Cli, sim: RunningSimulator, proxy: ConnectProxy,
                                                             tmp_path: Path) -> None:
    submit_jobs(cli, tmp_path, 5)

    result = cli("run", "--no-progress", env={**provider_env(sim, make_keys(1)), "HTTP_PROXY": proxy.url})

    assert result.returncode == 0, result.stdout + result.stderr
    assert batch_status(cli)["succeeded"] == 5
    assert proxy.forwarded and set(proxy.forwarded) == {f"127.0.0.1:{sim.port}"} and proxy.tunnels == []
