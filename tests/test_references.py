"""The image-reference parser and the trigger form's patterns (issue 17, item 1), with generated inputs.

Invariants:
* the parser accepts a string iff the form's ``pattern`` does, in Python (the API's jsonschema)
  and in ECMA-262 (the browser's form), for both image params;
* the host the parser returns is the host an HTTP client sends to, so credentials chosen for it
  go nowhere else;
* a refused value is a ``Permanent`` error naming the param, and never shows userinfo.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tfserving_airflow.connections import is_google_registry
from tfserving_deploy.errors import Permanent
from tfserving_deploy.image.oci import RegistryClient
from tfserving_deploy.image.references import (
    _IPV6,
    _REFERENCE,
    _REPOSITORY,
    MAX_LENGTH,
    InvalidReference,
    hostname_and_port,
    parse_reference,
    parse_repository,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SESSION = requests.Session()  # never used to send: the clients here only build URLs
PARAMS = {"image_repository": parse_repository, "serving_base_image": parse_reference}


@pytest.fixture(scope="module")
def form():
    """The DAG's own params (the trigger form): param name -> ``Param``."""
    spec = importlib.util.spec_from_file_location("tfserving_resnet_dag", ROOT / "dags" / "tfserving_resnet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from airflow.sdk.definitions.param import Param

    # The grammar only: serving_base_image's enum (the deployment's allowlist) is test_allowlists'.
    schemas = {name: module.dag.params.get_param(name).schema for name in PARAMS}
    return {name: Param(**{k: v for k, v in schema.items() if k != "enum"}) for name, schema in schemas.items()}


class Ecma:
    """The form's pattern as a browser reads it: ECMA-262, also with the ``u`` flag (ajv's)."""

    SCRIPT = (
        "const rl=require('readline').createInterface({input:process.stdin});"
        "rl.on('line',l=>{const [p,v]=JSON.parse(l);"
        "const a=new RegExp(p).test(v),b=new RegExp(p,'u').test(v);"
        "process.stdout.write((a===b?(a?'1':'0'):'x')+'\\n');});"
    )

    def __init__(self):
        self.node = subprocess.Popen(
            ["node", "-e", self.SCRIPT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )

    def matches(self, pattern: str, value: str) -> bool:
        self.node.stdin.write(json.dumps([pattern, value]) + "\n")
        answer = self.node.stdout.readline().strip()
        assert answer in ("0", "1"), f"with and without the u flag the pattern disagrees on {value!r}"
        return answer == "1"

    def close(self):
        self.node.stdin.close()
        self.node.wait(10)


@pytest.fixture(scope="module")
def ecma():
    checker = Ecma()
    yield checker
    checker.close()


def form_accepts(param, value: str) -> bool:
    from airflow.sdk.definitions.param import ParamValidationError

    try:
        param.resolve(value)
        return True
    except ParamValidationError:
        return False


def parser_accepts(param: str, value: str) -> bool:
    try:
        PARAMS[param](value, param)
        return True
    except InvalidReference as refused:
        assert isinstance(refused, Permanent) and str(refused).startswith(f"{param} ")
        return False


# -- strategies ------------------------------------------------------------------------------------

valid_references = st.from_regex(_REFERENCE, fullmatch=True).filter(lambda s: len(s) <= 512)
valid_repositories = st.from_regex(_REPOSITORY, fullmatch=True).filter(lambda s: len(s) <= 512)
TRUSTED_SUFFIXES = [".pkg.dev", "gcr.io", ".gcr.io", "us-docker.pkg.dev", "registry.example.com"]
ODD = "#?%@/:.[]\\ \t\n\r\x00-_AZaz09\u00e9\uff0e\u200b"


@st.composite
def mutated(draw, base=valid_references):
    """A valid reference with characters inserted, replaced or removed, or a trusted-looking suffix spliced in."""
    value = draw(base)
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(value)))
        kind = draw(st.sampled_from(["insert", "replace", "delete", "splice"]))
        char = draw(st.sampled_from(ODD))
        if kind == "insert":
            value = value[:i] + char + value[i:]
        elif kind == "replace":
            value = value[:i] + char + value[i + 1 :]
        elif kind == "delete":
            value = value[:i] + value[i + 1 :]
        else:
            value = value[:i] + char + draw(st.sampled_from(TRUSTED_SUFFIXES)) + value[i:]
    return value


any_text = st.one_of(mutated(), mutated(valid_repositories), st.text(alphabet=ODD + "abc123", max_size=40))


# -- properties ------------------------------------------------------------------------------------


@EXAMPLES
@given(value=valid_references)
def test_every_reference_of_the_grammar_parses_round_trips_and_the_form_takes_it(value, form, ecma):
    reference = parse_reference(value, "serving_base_image")
    if len(str(reference)) <= MAX_LENGTH:  # Docker Hub's filled-in host may take a long name past the cap
        assert parse_reference(str(reference)) == reference
    assert form_accepts(form["serving_base_image"], value)
    assert ecma.matches(form["serving_base_image"].schema["pattern"], value)


@EXAMPLES
@given(value=any_text, param=st.sampled_from(sorted(PARAMS)))
def test_the_parser_and_the_form_agree(value, param, form, ecma):
    accepted = parser_accepts(param, value)
    assert form_accepts(form[param], value) is accepted
    assert ecma.matches(form[param].schema["pattern"], value) is accepted


@EXAMPLES
@given(value=st.one_of(valid_references, any_text))
def test_the_parsed_host_is_where_requests_go(value):
    """Credentials are chosen for ``reference.host``; the client's requests must go exactly there."""
    try:
        reference = parse_reference(value)
    except InvalidReference:
        return
    client = RegistryClient(reference.host, session=SESSION)
    prepared = requests.Request("GET", client.url(f"{reference.path}/manifests/x")).prepare()
    sent_to = urlsplit(prepared.url)
    hostname, port = hostname_and_port(reference.host)
    assert (sent_to.hostname, sent_to.port) == (hostname, port)
    assert sent_to.path == f"/v2/{reference.path}/manifests/x" and not sent_to.fragment and not sent_to.query


@EXAMPLES
@given(literal=st.from_regex(_IPV6, fullmatch=True))
def test_an_ipv6_literal_of_the_grammar_is_an_address(literal):
    ipaddress.IPv6Address(literal[1:-1])


@EXAMPLES
@given(value=any_text)
def test_a_google_registry_is_one_the_requests_reach(value):
    """``is_google_registry`` (which hands out the Google token) is true only when the client's
    requests go to a Google host; anything it cannot parse is refused, never guessed."""
    try:
        google = is_google_registry(value)
    except InvalidReference:
        return
    if google:
        hostname = urlsplit(RegistryClient(parse_reference(value).host, session=SESSION).url("")).hostname or ""
        assert hostname.endswith((".pkg.dev", ".gcr.io")) or hostname == "gcr.io"


@EXAMPLES
@given(
    user=st.from_regex(r"[a-z0-9]{1,12}", fullmatch=True),
    secret=st.from_regex(r"[A-Za-z0-9]{12,24}", fullmatch=True),
    reference=valid_repositories,
    scheme=st.sampled_from(["", "https://", "http://"]),
)
def test_userinfo_is_refused_and_never_shown(user, secret, reference, scheme):
    value = f"{scheme}{user}:{secret}@{reference}"
    with pytest.raises(InvalidReference) as refused:
        parse_reference(value, "serving_base_image")
    assert secret not in str(refused.value)


# -- the spellings, by name ----------------------------------------------------------------


@pytest.mark.parametrize(
    "value,named",
    [
        ("127.0.0.1:5000#.pkg.dev/p/r/x", "character '#' (U+0023) at position 15"),
        ("127.0.0.1:5000?.pkg.dev/p/r/x", "character '?' (U+003F) at position 15"),
        ("127.0.0.1:5000%23.pkg.dev/p/r/x", "character '%' (U+0025) at position 15"),
        ("gcr.io/p/x ", "character ' ' (U+0020) at position 11"),
        ("gcr.io/p/x\n", "character '\\n' (U+000A) at position 11"),
        ("us-docker.pkg.dev@127.0.0.1:5000/x", "character '@' at position 18"),
        ("https://gcr.io/p/x", "a scheme (https://)"),
        ("gcr.io./p/x", "the registry host 'gcr.io.' is not host[:port] (an empty label"),
        ("GCR.io/p/x", "character 'G' at position 1: a registry host and repository path are lower case"),
        ("127.0.0.1:70000/x", "the port is not 1-65535"),
        ("[fe80::1%25eth0]:5000/x", "character '%' (U+0025) at position 9"),
    ],
)
def test_refusals_name_the_character_and_the_param(value, named):
    with pytest.raises(Permanent) as refused:
        parse_reference(value, "image_repository")
    message = str(refused.value)
    assert message.startswith("image_repository ") and named in message, message
    assert "host[:port]/path[:tag][@sha256:<64 hex>]" in message  # what to write instead


def test_repositories_name_no_tag_or_digest():
    with pytest.raises(InvalidReference, match="image_repository names no tag"):
        parse_repository("127.0.0.1:5000/resnet:1")
    with pytest.raises(InvalidReference, match="image_repository names no digest"):
        parse_repository("127.0.0.1:5000/resnet@sha256:" + "0" * 64)
    assert parse_repository("[::1]:5000/a/b").host == "[::1]:5000"
