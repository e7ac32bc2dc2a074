"""Twilio platform parity over real HTTP against a real `fnd serve`
(docs/differences.md).

Requests are signed exactly as Twilio signs them, with the twilio package's own
``RequestValidator.compute_signature``; the REST client of a function is pointed at a
Twilio-compatible fake on loopback with ``twilio_api_base_url``.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import psutil
import pytest
import requests
from twilio.request_validator import RequestValidator

from tests.fndserver import FndServer, running
from tests.hits import hit_server
from tests.twilio_fake import TwilioFake, twilio_fake

ACCOUNT_SID = "AC0123456789abcdef0123456789abcdef"
TOKEN = "0123456789abcdef0123456789abcdef"  # the fixture's .env
WRONG_TOKEN = "fedcba9876543210fedcba9876543210"
SMS = {"From": "+15551234567", "To": "+15557654321", "Body": "hello world", "SmsSid": "SM1"}


def sign(url: str, params: dict[str, str] | None = None, token: str = TOKEN) -> str:
    return str(RequestValidator(token).compute_signature(url, params or {}))


def without_port(url: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=parts.hostname or "").geturl()


def post(fnd: FndServer, path: str, params: dict[str, str], signature: str | None,
         **headers: str) -> requests.Response:
    if signature is not None:
        headers["X-Twilio-Signature"] = signature
    return fnd.request("POST", path, data=params, headers=headers)


@pytest.fixture(scope="module")
def fake() -> Iterator[TwilioFake]:
    with twilio_fake() as server:
        yield server


@pytest.fixture(scope="module")
def fnd(fake: TwilioFake) -> Iterator[FndServer]:
    with running("parity", "--workers-min", "2",
                 env={"FND_TWILIO_API_BASE_URL": fake.url}) as server:
        yield server


# --- protected functions: docs/differences.md#signatures ---------------------------------------


def test_signed_form_post_runs_with_and_without_explicit_port(fnd: FndServer) -> None:
    url = fnd.url + "/hook"
    assert ":" in urlsplit(url).netloc  # the daemon listens on a non-default port
    for signed_url in (url, without_port(url)):
        response = post(fnd, "/hook", SMS, sign(signed_url, SMS))
        assert response.status_code == 200, (signed_url, response.text)
        assert response.json() == SMS


def test_signed_get_with_query(fnd: FndServer) -> None:
    path = "/hook?CallSid=CA123&From=%2B15551234567"
    response = fnd.get(path, headers={"X-Twilio-Signature": sign(fnd.url + path)})
    assert response.status_code == 200
    assert response.json() == {"CallSid": "CA123", "From": "+15551234567"}


def test_unsigned_request_is_401_and_the_function_never_runs(fnd: FndServer) -> None:
    with hit_server() as hits:
        params = {**SMS, "url": hits.url}
        response = post(fnd, "/hook", params, None)
        assert response.status_code == 401
        assert "X-Twilio-Signature" in response.text
        line = fnd.invocation(response.headers["X-Fnd-Invocation-Id"])
        assert line["outcome"] == "rejected" and line.get("worker_pid") is None
        # The same request, signed, does run: the recorder proves the difference.
        signed = post(fnd, "/hook", params, sign(fnd.url + "/hook", params))
        assert signed.status_code == 200
        assert hits.wait_for("/hook-ran")
        assert hits.paths == ["/hook-ran"]


def test_tampered_parameter_is_401(fnd: FndServer) -> None:
    signature = sign(fnd.url + "/hook", SMS)
    for tampered in ({**SMS, "Body": "hello world!"}, {**SMS, "Extra": "1"},
                     {k: v for k, v in SMS.items() if k != "To"}):
        assert post(fnd, "/hook", tampered, signature).status_code == 401


def test_wrong_token_is_401(fnd: FndServer) -> None:
    response = post(fnd, "/hook", SMS, sign(fnd.url + "/hook", SMS, WRONG_TOKEN))
    assert response.status_code == 401


def test_replay_to_another_url_is_401(fnd: FndServer) -> None:
    signature = sign(fnd.url + "/hook", SMS)
    assert post(fnd, "/other", SMS, signature).status_code == 401
    assert post(fnd, "/hook?x=1", SMS, signature).status_code == 401
    https = fnd.url.replace("http://", "https://") + "/hook"
    assert post(fnd, "/hook", SMS, sign(https, SMS)).status_code == 401


def test_json_body_is_signed_through_body_sha256(fnd: FndServer) -> None:
    body = json.dumps({"EventType": "onMessageAdded", "Index": 3}).encode()
    digest = hashlib.sha256(body).hexdigest()
    path = f"/hook?bodySHA256={digest}"
    headers = {"Content-Type": "application/json", "X-Twilio-Signature": sign(fnd.url + path)}
    response = fnd.request("POST", path, data=body, headers=headers)
    assert response.status_code == 200
    assert response.json() == {"EventType": "onMessageAdded", "Index": 3, "bodySHA256": digest}
    tampered = body.replace(b"3", b"4")
    assert fnd.request("POST", path, data=tampered, headers=headers).status_code == 401
    # Without bodySHA256 nothing ties the body to the signature.
    unbound = {"Content-Type": "application/json", "X-Twilio-Signature": sign(fnd.url + "/hook")}
    assert fnd.request("POST", "/hook", data=body, headers=unbound).status_code == 401


def test_signature_is_checked_before_the_body_is_judged(fnd: FndServer) -> None:
    bad_json = {"Content-Type": "application/json"}
    assert fnd.request("POST", "/hook", data=b"{oops", headers=bad_json).status_code == 401
    bad_form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert fnd.request("POST", "/hook", data=b"a=%ff", headers=bad_form).status_code == 401
    digest = hashlib.sha256(b"{oops").hexdigest()
    path = f"/hook?bodySHA256={digest}"
    signed = {**bad_json, "X-Twilio-Signature": sign(fnd.url + path)}
    assert fnd.request("POST", path, data=b"{oops", headers=signed).status_code == 400


def test_forwarded_headers_from_an_untrusted_peer_do_not_count(fnd: FndServer) -> None:
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "public.example.com"}
    signature = sign("https://public.example.com/hook", SMS)
    assert post(fnd, "/hook", SMS, signature, **headers).status_code == 401


def test_options_preflight_needs_no_signature(fnd: FndServer) -> None:
    response = fnd.request("OPTIONS", "/hook")
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == "*"


def test_protected_asset_is_403_unless_signed(fnd: FndServer) -> None:
    assert fnd.get("/secret.txt").status_code == 403
    wrong = {"X-Twilio-Signature": sign(fnd.url + "/secret.txt", token=WRONG_TOKEN)}
    assert fnd.get("/secret.txt", headers=wrong).status_code == 403
    signed = fnd.get("/secret.txt",
                     headers={"X-Twilio-Signature": sign(fnd.url + "/secret.txt")})
    assert signed.status_code == 200 and signed.text == "top secret asset\n"


def test_private_function_is_never_served(fnd: FndServer) -> None:
    for path in ("/shared/util", "/shared/util.private"):
        assert fnd.get(path).status_code == 404


def test_public_url_is_what_twilio_signed() -> None:
    with running("parity", "--workers-min", "1",
                 env={"FND_PUBLIC_URL": "https://fns.example.com/"}) as fnd:
        for signed_url in ("https://fns.example.com/hook", "https://fns.example.com:443/hook"):
            assert post(fnd, "/hook", SMS, sign(signed_url, SMS)).status_code == 200, signed_url
        assert post(fnd, "/hook", SMS, sign(fnd.url + "/hook", SMS)).status_code == 401
        assert post(fnd, "/hook", SMS, sign("https://evil.example.com/hook", SMS)).status_code \
            == 401


def test_trusted_proxy_supplies_scheme_and_host() -> None:
    with running("parity", "--workers-min", "1",
                 env={"FND_TRUSTED_PROXIES": "127.0.0.1"}) as fnd:
        headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "public.example.com"}
        signature = sign("https://public.example.com/hook", SMS)
        assert post(fnd, "/hook", SMS, signature, **headers).status_code == 200
        assert post(fnd, "/hook", SMS, signature).status_code == 401  # no forwarded headers


def test_without_auth_token_protected_paths_fail_closed() -> None:
    env_file = f"ACCOUNT_SID={ACCOUNT_SID}\n"
    with running("parity", "--workers-min", "1", "--allow-broken",
                 files={".env": env_file}) as fnd:
        response = post(fnd, "/hook", SMS, sign(fnd.url + "/hook", SMS))
        assert response.status_code == 500
        assert response.text.startswith("protected function needs AUTH_TOKEN")
        assert fnd.invocation(response.headers["X-Fnd-Invocation-Id"]).get("worker_pid") is None
        asset = fnd.get("/secret.txt")
        assert asset.status_code == 500 and "needs AUTH_TOKEN" in asset.text
        assert fnd.get("/public.txt").status_code == 200


def test_dev_no_signatures_skips_the_check_with_a_warning_per_request() -> None:
    with running("parity", "--workers-min", "1", "--dev", "--no-signatures") as fnd:
        ids = []
        for _ in range(2):
            response = post(fnd, "/hook", SMS, None)
            assert response.status_code == 200 and response.json() == SMS
            ids.append(response.headers["X-Fnd-Invocation-Id"])
        assert fnd.get("/secret.txt").status_code == 200
        for invocation_id in ids:
            fnd.invocation(invocation_id)  # logged after the warning
            skipped = [line for line in fnd.lines
                       if line.get("event") == "signature check skipped"
                       and line.get("invocation_id") == invocation_id]
            assert len(skipped) == 1 and skipped[0]["level"] == "warning"


# --- docs/handlers.md#runtime --------------------------------------------------------------------


def test_runtime_get_functions_lists_every_function_with_its_file(fnd: FndServer) -> None:
    functions = fnd.get("/runtime/functions").json()
    assert {"hook", "other", "shared/util", "runtime/functions", "sms/send"} <= set(functions)
    assert functions["shared/util"]["path"].endswith("/functions/shared/util.private.py")
    assert functions["hook"] == {"path": functions["hook"]["path"]}


def test_runtime_load_shares_a_private_function(fnd: FndServer) -> None:
    body = fnd.get("/runtime/load?name=Ada").json()
    assert body == {"greeting": "Hello, Ada!", "same_module": True, "boots": 1, "snake": True}


def test_runtime_get_assets_gives_private_assets_with_path_and_open(fnd: FndServer) -> None:
    body = fnd.get("/runtime/assets").json()
    assert {"/config.json", "/logo.bin"} <= set(body["keys"])
    assert body["path"].endswith("/assets/config.private.json")
    assert body["config"] == {"greeting": "hi", "n": 3}
    assert body["binary"] == [0, 1, 2, 255]
    assert body["read_bytes"] == 4


def test_runtime_get_assets_leaves_out_public_and_protected_assets(fnd: FndServer) -> None:
    assert fnd.get("/runtime/assets").json()["keys"] == ["/config.json", "/logo.bin"]


def test_runtime_get_sync_fetches_the_service_through_the_client(
    fnd: FndServer, fake: TwilioFake
) -> None:
    response = fnd.get("/runtime/sync")
    assert response.status_code == 200, response.text
    assert response.json() == {"default": "default", "named": "chat", "sid": "IS" + "b" * 32}
    fetched = [r for r in fake.requests if r.path.startswith("/v1/Services/")]
    assert [r.path for r in fetched[-2:]] == ["/v1/Services/default", "/v1/Services/chat"]
    assert fetched[-1].headers["x-twilio-host"] == "sync.twilio.com"


def test_get_twilio_client_sends_an_authenticated_message(
    fnd: FndServer, fake: TwilioFake
) -> None:
    params = {"To": "+15557654321", "From": "+15551234567", "Body": "Ahoy from fnd"}
    response = fnd.request("POST", "/sms/send", data=params)
    assert response.status_code == 200, response.text
    assert response.json() == {"sid": "SM" + "a" * 32, "status": "queued",
                               "body": "Ahoy from fnd", "to": "+15557654321"}
    sent = [r for r in fake.requests if r.path.endswith("/Messages.json")][-1]
    assert sent.method == "POST"
    assert sent.path == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
    expected = base64.b64encode(f"{ACCOUNT_SID}:{TOKEN}".encode()).decode()
    assert sent.headers["authorization"] == f"Basic {expected}"
    assert sent.headers["content-type"].startswith("application/x-www-form-urlencoded")
    assert sent.headers["x-twilio-host"] == "api.twilio.com"
    assert sent.form == {"To": ["+15557654321"], "From": ["+15551234567"],
                         "Body": ["Ahoy from fnd"]}


# --- cookies and header limits: docs/handlers.md#twilioresponse ----------------------------------


def cookies_of(response: requests.Response) -> list[str]:
    return list(response.raw.headers.getlist("Set-Cookie"))


def test_set_cookie_defaults_and_domain_dropped(fnd: FndServer) -> None:
    response = fnd.get("/cookies/set")
    assert response.status_code == 200
    assert cookies_of(response) == [
        "plain=1; HttpOnly; Secure",
        "scoped=2; Path=/app; Max-Age=3600; HttpOnly; Secure",
        "relaxed=3; Secure; SameSite=None; HttpOnly",
        "snake=4; Max-Age=86400; HttpOnly; Secure",
    ]


@pytest.mark.parametrize("path", ["/cookies/too_long", "/cookies/expires_late"])
def test_cookie_lifetime_over_a_day_is_400(fnd: FndServer, path: str) -> None:
    response = fnd.get(path)
    assert response.status_code == 400
    assert "over one day" in response.text and "session" in response.text
    assert "Set-Cookie" not in response.headers


def test_remove_cookie_drops_earlier_ones_and_expires_it(fnd: FndServer) -> None:
    assert cookies_of(fnd.get("/cookies/remove")) == [
        "keep=1; HttpOnly; Secure",
        "drop=; Max-Age=0; HttpOnly; Secure",
        "session=; Max-Age=0; HttpOnly; Secure",
    ]


def test_cookie_defaults_can_be_switched_off() -> None:
    with running("parity", "--workers-min", "1", env={"FND_COOKIE_SECURE": "false"}) as fnd:
        assert cookies_of(fnd.get("/cookies/set"))[0] == "plain=1"


@pytest.mark.parametrize(("path", "status"), [
    ("/headers/many?n=80", 200), ("/headers/many?n=95", 500),
    ("/headers/big?size=15000", 200), ("/headers/big?size=16000", 500),
])
def test_response_header_limits(fnd: FndServer, path: str, status: int) -> None:
    response = fnd.get(path)
    assert response.status_code == status, response.text
    if status == 500:
        assert "response headers too large" in response.text
        line = fnd.invocation(response.headers["X-Fnd-Invocation-Id"])
        assert "response headers too large" in line["reason"]


def test_request_header_limits_are_431(fnd: FndServer) -> None:
    many: dict[str, Any] = {f"X-H{i}": "v" for i in range(95)}
    assert fnd.get("/runtime/functions", headers=many).status_code == 431
    assert fnd.get("/runtime/functions", headers={"X-Big": "v" * 16000}).status_code == 431
    assert fnd.get("/runtime/functions", headers={"X-Fine": "v" * 8000}).status_code == 200


# --- Twilio's runtime side by side: context, event, errors, assets, os.environ -----------------

BASE_PATH = "/usr/local/bin:/usr/bin:/bin"


def echo(fnd: FndServer, path: str = "/echo/event", **kwargs: Any) -> dict[str, Any]:
    response = fnd.request(kwargs.pop("method", "GET"), path, **kwargs)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/json"
    result: dict[str, Any] = response.json()
    return result


def test_context_path_is_the_request_path_unless_the_project_sets_it(fnd: FndServer) -> None:
    context = echo(fnd)["context"]
    assert context["PATH"] == "/echo/event"
    assert context["ACCOUNT_SID"] == ACCOUNT_SID and context["AUTH_TOKEN"] == TOKEN
    assert context["SERVICE_SID"] is None and context["ENVIRONMENT_SID"] is None


DOTENV_OVERRIDES = {
    "PATH": "/usr/bin:/bin",
    "DOMAIN_NAME": "fns.example.com",
    "SERVICE_SID": "ZS" + "1" * 32,
    "ENVIRONMENT_SID": "ZE" + "2" * 32,
    "ACCOUNT_SID": "AC" + "3" * 32,
    "AUTH_TOKEN": "4" * 32,
}


TWILIO_VARIABLES = {"TWILIO_ACCOUNT_SID": "AC" + "5" * 32, "TWILIO_AUTH_TOKEN": "6" * 32}


@pytest.fixture(scope="module")
def overridden() -> Iterator[FndServer]:
    variables = {**DOTENV_OVERRIDES, **TWILIO_VARIABLES}
    dotenv = "".join(f"{name}={value}\n" for name, value in variables.items())
    with running("parity", "--workers-min", "1", files={".env": dotenv}) as server:
        yield server


def test_every_default_context_key_can_be_set_in_dotenv(overridden: FndServer) -> None:
    context = echo(overridden, headers={"Host": "other.example.net"})["context"]
    assert {name: context[name] for name in DOTENV_OVERRIDES} == DOTENV_OVERRIDES


def test_project_variables_are_in_os_environ_of_the_function_and_its_children(
    fnd: FndServer,
) -> None:
    answer = echo(fnd, "/echo/environ")
    environ, child = answer["environ"], answer["child"]
    scratch = environ["TMPDIR"]
    assert scratch.startswith("/") and scratch != "/tmp"
    # The base and the project's variables; nothing of the daemon's (or the test's) own.
    assert environ == {"PATH": BASE_PATH, "HOME": scratch, "LANG": "C.UTF-8",
                       "TMPDIR": scratch, "ACCOUNT_SID": ACCOUNT_SID, "AUTH_TOKEN": TOKEN}
    assert child == environ


def test_path_and_domain_name_are_context_keys_not_variables(overridden: FndServer) -> None:
    environ = echo(overridden, "/echo/environ")["environ"]
    assert environ["PATH"] == BASE_PATH  # programs are still found
    assert "DOMAIN_NAME" not in environ
    assert {name: environ[name] for name in ("SERVICE_SID", "ENVIRONMENT_SID", "ACCOUNT_SID",
                                             "AUTH_TOKEN")} == {
        name: DOTENV_OVERRIDES[name] for name in ("SERVICE_SID", "ENVIRONMENT_SID",
                                                  "ACCOUNT_SID", "AUTH_TOKEN")}


def test_a_library_reads_its_configuration_from_os_environ(overridden: FndServer) -> None:
    assert echo(overridden, "/echo/env_client") == {
        "username": TWILIO_VARIABLES["TWILIO_ACCOUNT_SID"],
        "password": TWILIO_VARIABLES["TWILIO_AUTH_TOKEN"]}


def test_the_zygote_holds_no_project_variable(fnd: FndServer) -> None:
    response = fnd.get("/echo/environ")
    worker = fnd.invocation(response.headers["X-Fnd-Invocation-Id"])["worker_pid"]
    zygote = psutil.Process(worker).ppid()
    assert zygote != fnd.process.pid
    with open(f"/proc/{zygote}/environ", "rb") as f:
        names = {entry.partition(b"=")[0] for entry in f.read().split(b"\0") if entry}
    assert names <= {b"PATH", b"LANG", b"LC_ALL"}


def test_restricted_request_headers_never_reach_the_event(fnd: FndServer) -> None:
    restricted = {
        "I-Twilio-Idempotency-Token": "forged", "I-T-Account": "forged", "OT-Baggage": "forged",
        "X-Amzn-Trace-Id": "forged", "X-Amz-Date": "forged", "X-Forwarded-For": "10.9.9.9",
        "X-Accel-Redirect": "/internal", "Via": "1.1 forged", "Referer": "https://x.example",
        "X-Real-IP": "10.9.9.9", "Proxy-Authorization": "Basic Zm9v",
        "Proxy-Connection": "keep-alive",
    }
    kept = {"X-Twilio-Signature": "sig", "X-Custom": "mine", "Twilio-Ot": "mine"}
    headers = echo(fnd, headers={**restricted, **kept})["event"]["request"]["headers"]
    assert not set(headers) & {name.lower() for name in restricted}
    assert {name: headers[name.lower()] for name in kept} == kept


@pytest.mark.parametrize(("path", "error"), [
    ("/errors/dict", {"errorMessage": "oh no", "code": 42}),
    ("/errors/list", ["bad", 1, None]),
])
def test_dict_or_list_error_is_a_json_500(fnd: FndServer, path: str, error: object) -> None:
    response = fnd.get(path)
    assert response.status_code == 500
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == error
    line = fnd.invocation(response.headers["X-Fnd-Invocation-Id"])
    assert line["reason"] == "callback(error): " + json.dumps(error, separators=(",", ":"))


def test_error_json_cannot_encode_is_text(fnd: FndServer) -> None:
    response = fnd.get("/errors/unjsonable")
    assert response.status_code == 500
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert response.text == "{'when': <class 'object'>}"


@pytest.mark.parametrize(("path", "content_type"), [
    ("/texts/note.txt", "text/plain; charset=utf-8"),
    ("/texts/style.css", "text/css; charset=utf-8"),
    ("/texts/data.json", "application/json; charset=utf-8"),
    ("/texts/feed.xml", "text/xml; charset=utf-8"),
    ("/texts/pixel.png", "image/png"),
])
def test_text_assets_say_utf8(fnd: FndServer, path: str, content_type: str) -> None:
    response = fnd.get(path)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == content_type


def test_javascript_asset_says_utf8(fnd: FndServer) -> None:
    response = fnd.get("/texts/app.js")
    assert response.status_code == 200
    assert response.headers["Content-Type"] in ("text/javascript; charset=utf-8",
                                                 "application/javascript; charset=utf-8")
    assert response.content.decode("utf-8") == 'console.log("hé");\n'


def test_invalid_utf8_in_form_and_query_is_the_same_replacement(fnd: FndServer) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    event = echo(fnd, "/echo/event?q=%ff%e2%82x&k%C3=1", method="POST", headers=form,
                 data=b"f=%ff%e2%82x&raw=\xff\xe2\x82x&k%C3=2")["event"]
    assert event["q"] == event["f"] == event["raw"] == "\ufffd\ufffdx"
    assert event["k\ufffd"] == "2"  # the same key in both: the body wins, as for any key


# Item for the merge with the public_url change: DOMAIN_NAME follows public_url.
def test_domain_name_is_public_url_host_not_the_clients() -> None:
    with running("parity", "--workers-min", "1",
                 env={"FND_PUBLIC_URL": "https://fns.example.com/"}) as fnd:
        context = echo(fnd, headers={"Host": "evil.example.com"})["context"]
        assert context["DOMAIN_NAME"] == "fns.example.com"


def test_dotenv_domain_name_wins_over_public_url() -> None:
    dotenv = f"DOMAIN_NAME=set.example\nAUTH_TOKEN={TOKEN}\n"  # protected functions need it
    with running("parity", "--workers-min", "1", files={".env": dotenv},
                 env={"FND_PUBLIC_URL": "https://fns.example.com/"}) as fnd:
        assert echo(fnd, headers={"Host": "evil.example.com"})["context"]["DOMAIN_NAME"] \
            == "set.example"


# --- deliberate choices (docs/differences.md) ------------------------------------------------


def test_bracket_keys_are_literal_in_query_and_form(fnd: FndServer) -> None:
    event = echo(fnd, "/echo/event?b[c]=3&d[]=x&d[]=y", method="POST",
                 data={"e[f]": "4", "g[]": "z"})["event"]
    assert {key: event[key] for key in ("b[c]", "d[]", "e[f]", "g[]")} == {
        "b[c]": "3", "d[]": ["x", "y"], "e[f]": "4", "g[]": "z"}
    assert "b" not in event and "e" not in event


def test_json_array_body_is_400(fnd: FndServer) -> None:
    response = fnd.request("POST", "/echo/event", data=b'["a", "b"]',
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.headers["Content-Type"].startswith("text/plain")
    assert response.text.startswith("JSON body must be an object, got an array")


@pytest.mark.parametrize("content_type", ["application/vnd.api+json",
                                          "application/merge-patch+json; charset=utf-8"])
def test_plus_json_bodies_are_parsed(fnd: FndServer, content_type: str) -> None:
    event = echo(fnd, method="POST", data=b'{"data": {"id": "1"}}',
                 headers={"Content-Type": content_type})["event"]
    assert event["data"] == {"id": "1"}


def test_express_j_prefixed_cookie_stays_a_string(fnd: FndServer) -> None:
    cookies = echo(fnd, headers={"Cookie": "prefs=j%3A%7B%22a%22%3A1%7D; plain=1"})[
        "event"]["request"]["cookies"]
    assert cookies == {"prefs": 'j:{"a":1}', "plain": "1"}


def test_invalid_percent_escapes_in_the_query_become_replacement_characters(
    fnd: FndServer,
) -> None:
    # http.client sends the target as written (requests would re-quote "%zz")
    connection = http.client.HTTPConnection(urlsplit(fnd.url).netloc, timeout=30)
    try:
        connection.request("GET", "/echo/event?a=%ff&b=%C3%28&c=ok%zz&d=%e2%82%ac")
        response = connection.getresponse()
        assert response.status == 200
        event = json.loads(response.read())["event"]
    finally:
        connection.close()
    assert [event[key] for key in "abcd"] == ["\ufffd", "\ufffd(", "ok%zz", "\u20ac"]


def test_callback_with_a_number_is_a_json_body_not_a_status(fnd: FndServer) -> None:
    response = fnd.get("/twilio_run/status")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.text == "201"


def test_append_header_is_case_insensitive(fnd: FndServer) -> None:
    response = fnd.get("/twilio_run/append")
    assert response.status_code == 200 and response.text == "ok"
    assert response.raw.headers.getlist("X-Tag") == ["a", "b"]


def test_set_body_with_twiml_sends_the_xml(fnd: FndServer) -> None:
    response = fnd.get("/twilio_run/twiml_body")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/xml"
    assert response.text == ('<?xml version="1.0" encoding="UTF-8"?>'
                             "<Response><Message>Ahoy</Message></Response>")
