"""Where a model download may connect (hosts.py, transport.py): no request is ever sent to a
non-public address unless the deployment's allowlist (``TFSERVING_DEPLOY_MODEL_HOSTS``) covers
it; a resolver that fails lets nothing through; and the connection goes to the address that was
checked, even when DNS answers differently the second time (rebinding).

The properties run the real download path (``open_url``: policy, pinned session, urllib3) with a
fake resolver and a socket ``connect`` that records where it was asked to go, and refuses.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket

import pytest
from http_recorder import Recorder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tfserving_deploy.errors import ModelFetchError, Permanent, UnsafeModelUrl
from tfserving_deploy.model.download import open_url
from tfserving_deploy.model.hosts import ModelHosts
from tfserving_deploy.model.urls import UrlPolicy

HTTP = frozenset({"http", "https"})
NAME = "models.rebind.test"

# Not globally reachable (IANA's special-purpose registries), each a class of its own.
PRIVATE_V4 = [
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "224.0.0.0/4",
        "240.0.0.0/4",
    )
]
PRIVATE_V6 = [ipaddress.ip_network(n) for n in ("::1/128", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8")]
PUBLIC_V4 = [ipaddress.ip_network(n) for n in ("8.8.8.0/24", "1.1.1.0/24", "93.184.216.0/24")]
PUBLIC_V6 = [ipaddress.ip_network(n) for n in ("2001:4860::/32", "2606:4700::/32")]
ALLOWLISTS = ["", "127.0.0.0/8", "10.0.0.0/8,fc00::/7", "::1/128", "192.168.1.0/24,*.corp.example"]


def address_in(networks) -> st.SearchStrategy:
    return st.sampled_from(networks).flatmap(lambda n: st.integers(0, n.num_addresses - 1).map(lambda i: n[i]))


def ipv6_spellings(v4: ipaddress.IPv4Address, bits16: int, bits32: int) -> list[ipaddress.IPv6Address]:
    """Every IPv6 form that carries packets to ``v4``."""
    teredo_server = int(ipaddress.IPv4Address("65.54.227.120"))  # a public one: only the client is v4
    return [
        ipaddress.IPv6Address(f"::ffff:{v4}"),  # IPv4-mapped
        ipaddress.IPv6Address(f"::{v4}"),  # IPv4-compatible
        ipaddress.IPv6Address(f"::ffff:0:{v4}"),  # SIIT
        ipaddress.IPv6Address(f"64:ff9b::{v4}"),  # NAT64
        ipaddress.IPv6Address((0x0064FF9B0001 << 80) | (bits32 << 32) | int(v4)),  # local NAT64
        ipaddress.IPv6Address((0x2002 << 112) | (int(v4) << 80) | bits16),  # 6to4
        ipaddress.IPv6Address(  # Teredo: server, flags 0, obfuscated port and client
            (0x20010000 << 96) | (teredo_server << 64) | ((bits16 ^ 0xFFFF) << 32) | (int(v4) ^ 0xFFFFFFFF)
        ),
    ]


# (the address a URL names or a name resolves to, the non-public address it reaches)
private = st.one_of(
    st.one_of(address_in(PRIVATE_V4), address_in(PRIVATE_V6)).map(lambda ip: (ip, ip)),
    st.tuples(address_in(PRIVATE_V4), st.integers(0, 2**16 - 1), st.integers(0, 2**32 - 1)).flatmap(
        lambda t: st.sampled_from(ipv6_spellings(*t)).map(lambda ip: (ip, t[0]))
    ),
)
public = st.one_of(address_in(PUBLIC_V4), address_in(PUBLIC_V6))


def spellings(ip) -> list[str]:
    """The ways a URL can name ``ip`` directly: dotted, one number, octal, hex; IPv6 in brackets."""
    if ip.version == 6:
        return [f"[{ip}]", f"[{ip.exploded}]"]
    octets = str(ip).split(".")
    return [
        str(ip),
        str(int(ip)),
        ".".join(f"0{int(o):o}" for o in octets),
        ".".join(hex(int(o)) for o in octets),
    ]


def _answer(address: str, port: int):
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sockaddr = (address, port, 0, 0) if family == socket.AF_INET6 else (address, port)
    return (family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr)


@contextlib.contextmanager
def dns(name: str, *answers):
    """``name`` resolves to ``answers[0]``, then ``answers[1]``...; an exception answer is raised.
    IP literals resolve as usual (no DNS)."""
    asked: list[str] = []
    previous = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host != name or kwargs.get("flags", 0) & socket.AI_NUMERICHOST:  # numeric-only: no DNS
            return previous(host, port, *args, **kwargs)
        answer = answers[min(len(asked), len(answers) - 1)]
        asked.append(host)
        if isinstance(answer, Exception):
            raise answer
        return [_answer(str(a), int(port or 80)) for a in answer]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket, "getaddrinfo", getaddrinfo)
        yield asked


@contextlib.contextmanager
def no_connections():
    """Every address a socket is asked to connect to, recorded; the connection is refused."""
    seen: list[str] = []

    def connect(sock, address):
        seen.append(address[0])
        raise ConnectionRefusedError(111, "refused by the test")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", connect)
        yield seen


def attempt(url: str, allowlist: str) -> Exception | None:
    policy = UrlPolicy(HTTP, hosts=ModelHosts.parse(allowlist))
    try:
        open_url("GET", url, policy=policy, headers={}, timeout=1.0)
    except ModelFetchError as exc:
        return exc
    return None


# -- the invariant, with generated addresses -----------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=private, allowlist=st.sampled_from(ALLOWLISTS), by_name=st.booleans(), data=st.data())
def test_no_request_reaches_a_non_public_address_unless_allowlisted(case, allowlist, by_name, data):
    ip, reaches = case
    host = NAME if by_name else data.draw(st.sampled_from(spellings(ip)))
    with dns(NAME, [ip]), no_connections() as seen:
        error = attempt(f"http://{host}/m.tar.gz", allowlist)
    assert error is not None
    allowlisted = any(reaches in network for network in ModelHosts.parse(allowlist).networks)
    for address in seen:  # a connection was tried only where the allowlist says so, and only there
        assert ipaddress.ip_address(address) == ip and allowlisted, (address, reaches, allowlist)
    if not seen:
        assert isinstance(error, UnsafeModelUrl), error


@settings(max_examples=100, deadline=None)
@given(ip=public, by_name=st.booleans(), data=st.data())
def test_a_public_address_is_connected_to_and_only_it(ip, by_name, data):
    host = NAME if by_name else data.draw(st.sampled_from(spellings(ip)))
    with dns(NAME, [ip], [ipaddress.ip_address("169.254.169.254")]), no_connections() as seen:
        error = attempt(f"http://{host}/m.tar.gz", "")
    assert seen == [str(ip)] and "could not reach" in str(error), (seen, error)


# -- the exact spellings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://[::ffff:169.254.169.254]/latest/meta-data/",
        "http://[::ffff:a9fe:a9fe]/latest/meta-data/",
        "http://[::169.254.169.254]/latest/meta-data/",
        "http://2852039166/latest/meta-data/",
        "http://0251.0376.0251.0376/latest/meta-data/",
        "http://0xa9.0xfe.0xa9.0xfe/latest/meta-data/",
        "http://0xa9fea9fe/latest/meta-data/",
        "http://169.254.43518/latest/meta-data/",
        "http://[64:ff9b::169.254.169.254]/latest/meta-data/",
        "http://[64:ff9b:1::a9fe:a9fe]/latest/meta-data/",
        "http://[2002:a9fe:a9fe::1]/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://metadata.google.internal./computeMetadata/v1/",
        "http://[::ffff:127.0.0.1]/m.tar.gz",
        "http://[64:ff9b::a00:1]/m.tar.gz",
        "http://[2002:c0a8:101::1]/m.tar.gz",
        "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/m.tar.gz",
        "http://0/m.tar.gz",
    ],
)
def test_every_spelling_of_a_metadata_or_private_address_is_refused_before_any_connection(url):
    with no_connections() as seen:
        error = attempt(url, "")
    assert isinstance(error, UnsafeModelUrl) and isinstance(error, Permanent), error
    assert seen == []
    assert "metadata" in str(error) or "not a public address" in str(error), error


@pytest.mark.parametrize(
    "host",
    [
        "[::ffff:169.254.169.254]",
        "169.254.169.254",
        "[64:ff9b:1:a9fe:a9:fe00::]",  # local NAT64 /48
        "[64:ff9b:1:a9:fe:a9fe::]",  # /56
        "[64:ff9b:1:0:a9:fea9:fe00:0]",  # /64
        "[64:ff9b:1::a9fe:a9fe]",  # /96
    ],
)
def test_metadata_stays_refused_even_inside_an_allowlisted_network(host):
    with no_connections() as seen:
        error = attempt(f"http://{host}/", "0.0.0.0/0,::/0")
    assert isinstance(error, UnsafeModelUrl) and "metadata" in str(error) and seen == []


# -- the resolver ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "failure", [socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"), TimeoutError("slow")]
)
def test_a_resolver_that_fails_lets_nothing_through_and_is_retried(failure):
    with dns(NAME, failure), no_connections() as seen:
        error = attempt(f"http://{NAME}/m.tar.gz", "")
    assert seen == []
    assert not isinstance(error, Permanent), error  # the weather: the task's retries apply
    assert f"could not resolve {NAME}" in str(error) and "retried" in str(error), error


def test_an_empty_answer_lets_nothing_through():
    with dns(NAME, []), no_connections() as seen:
        error = attempt(f"http://{NAME}/m.tar.gz", "")
    assert seen == [] and "resolves to no address" in str(error)


def test_one_refused_address_among_several_refuses_the_host():
    answer = [ipaddress.ip_address("8.8.8.8"), ipaddress.ip_address("10.0.0.1")]
    with dns(NAME, answer), no_connections() as seen:
        error = attempt(f"http://{NAME}/m.tar.gz", "")
    assert isinstance(error, UnsafeModelUrl) and "10.0.0.1" in str(error) and seen == []


def test_the_connection_goes_to_the_checked_answer_not_a_second_one():
    """Rebinding: the first answer (checked, allowlisted) is 127.0.0.1; every later one is
    127.0.0.2, where another server listens on the same port, outside the allowlist."""
    checked = Recorder()
    port = checked.server_address[1]
    rebound = Recorder(("127.0.0.2", port))
    checked.files["/m.tar.gz"] = rebound.files["/m.tar.gz"] = b"model"
    try:
        with dns(NAME, ["127.0.0.1"], ["127.0.0.2"]) as asked:
            response = open_url(
                "GET",
                f"http://{NAME}:{port}/m.tar.gz",
                policy=UrlPolicy(HTTP, hosts=ModelHosts.parse("127.0.0.1/32")),
                headers={},
                timeout=5.0,
            )
            response.close()
    finally:
        checked.close()
        rebound.close()
    assert response.status_code == 200
    assert checked.requests == ["GET /m.tar.gz"] and rebound.requests == []
    assert checked.hosts == [f"{NAME}:{port}"]  # the Host header keeps the URL's name
    assert asked == [NAME]  # resolved once, by the check


def test_tls_is_verified_against_the_urls_name_not_the_pinned_address(tmp_path):
    """A certificate for the URL's name (not for 127.0.0.1) passes; one for another name does not."""
    server = Recorder()
    server.files["/m.tar.gz"] = b"model"
    cert = _tls(server, tmp_path, NAME)
    port = server.server_address[1]
    policy = UrlPolicy(HTTP, hosts=ModelHosts.parse("127.0.0.1/32"))
    try:
        with pytest.MonkeyPatch.context() as mp, dns(NAME, ["127.0.0.1"]), dns("other.rebind.test", ["127.0.0.1"]):
            mp.setenv("REQUESTS_CA_BUNDLE", str(cert))
            response = open_url("GET", f"https://{NAME}:{port}/m.tar.gz", policy=policy, headers={}, timeout=5.0)
            response.close()
            with pytest.raises(ModelFetchError, match="could not reach https://other.rebind.test.*SSLError"):
                open_url("GET", f"https://other.rebind.test:{port}/m.tar.gz", policy=policy, headers={}, timeout=5.0)
    finally:
        server.close()
    assert response.status_code == 200 and server.requests == ["GET /m.tar.gz"]


def _tls(server: Recorder, tmp_path, name: str):
    import ssl
    import subprocess

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        + ["-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={name}"]
        + ["-addext", f"subjectAltName=DNS:{name}"],
        check=True,
        capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    return cert


# -- the allowlist ---------------------------------------------------------------------------------------


def test_an_allowlist_restricts_names_and_says_what_to_do():
    hosts = ModelHosts.parse("models.example.com, *.buckets.example.com, 10.20.0.0/16")
    assert hosts.names_host("models.example.com.") and hosts.names_host("team-a.buckets.example.com")
    assert not hosts.names_host("buckets.example.com") and not hosts.names_host("evil-models.example.com")
    with no_connections() as seen:
        error = attempt("http://8.8.8.8/m.tar.gz", "models.example.com,10.20.0.0/16")
    assert isinstance(error, UnsafeModelUrl) and seen == []
    assert "host 8.8.8.8 is not in this deployment's model hosts" in str(error)
    assert "TFSERVING_DEPLOY_MODEL_HOSTS=models.example.com,10.20.0.0/16" in str(error)
    assert "have the Airflow admin add the host" in str(error)


def test_a_listed_name_still_never_reaches_a_private_address_outside_the_cidrs():
    with dns("models.example.com", ["10.9.9.9"]), no_connections() as seen:
        error = attempt("http://models.example.com/m.tar.gz", "models.example.com")
    assert isinstance(error, UnsafeModelUrl) and "10.9.9.9, not a public address" in str(error) and seen == []


def test_names_off_the_allowlist_are_refused_without_dns():
    refused = pytest.raises(UnsafeModelUrl, match="not in this deployment's model hosts")
    with dns("elsewhere.example.org", socket.gaierror("must not be asked")) as asked, refused:
        UrlPolicy(HTTP, hosts=ModelHosts.parse("*.example.com")).check_offline("https://elsewhere.example.org/m")
    assert asked == []


@pytest.mark.parametrize("entry", ["10.0.0.0/33", "not a host", "*x.example.com", "http://x"])
def test_a_malformed_allowlist_says_which_entry(entry):
    with pytest.raises(ModelFetchError, match="TFSERVING_DEPLOY_MODEL_HOSTS"):
        ModelHosts.from_environment({"TFSERVING_DEPLOY_MODEL_HOSTS": f"models.example.com,{entry}"})
