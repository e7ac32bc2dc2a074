"""Errors and loading: 500 bodies, tracebacks, bootstrap once and retried
(docs/handlers.md#a-function-file, docs/handlers.md#completing-the-invocation)."""

from __future__ import annotations

from typing import Any

from tests.worker.harness import Worker

TEXT = ("Content-Type", "text/plain; charset=utf-8")


def test_uncaught_exception_is_500_without_traceback_in_production(worker: Worker) -> None:
    outcome = worker.call("raise_error")
    # The message may hold secrets: the client gets the type and the id to find the log line.
    assert (outcome.status, outcome.headers) == (500, [TEXT])
    assert outcome.text == f"the function failed: ValueError (invocation {outcome.result['id']})"
    assert outcome.result["error"] == "handler raised ValueError: boom"
    # The traceback goes to the log only.
    (log,) = [line for line in outcome.lines("logging") if "Traceback" in line]
    assert 'raise ValueError("boom")' in log
    assert outcome.done["clean"] is True


def test_dev_mode_body_carries_the_traceback(make_worker: Any) -> None:
    outcome = make_worker(dev=True).call("raise_error")
    assert outcome.status == 500
    first, rest = outcome.text.split("\n\n", 1)
    assert first == "ValueError: boom"
    assert rest.startswith("Traceback (most recent call last):")
    # The traceback starts in the function's file: fnd's own frames are left out.
    assert "raise_error.py" in rest.splitlines()[1]
    assert "worker/invoke.py" not in rest


def test_async_traceback_starts_in_the_function(make_worker: Any) -> None:
    outcome = make_worker(dev=True).call("async_raise")
    assert outcome.text.startswith("RuntimeError: async boom\n\nTraceback")
    assert "async_raise.py" in outcome.text.splitlines()[3]
    assert "worker/invoke.py" not in outcome.text
    assert "worker/aio.py" not in outcome.text


def test_callback_with_a_string_error(worker: Worker) -> None:
    outcome = worker.call("callback_error", {"error": "card declined"})
    assert (outcome.status, outcome.headers, outcome.body) == (500, [TEXT], b"card declined")
    assert outcome.result["error"] == "callback(error): card declined"


def test_callback_with_a_dict_or_list_error_is_json(worker: Worker) -> None:
    outcome = worker.call("callback_error", {"error": {"code": 7, "msg": "é"}})
    assert (outcome.status, outcome.headers, outcome.body) == (
        500, [("Content-Type", "application/json")], '{"code":7,"msg":"é"}'.encode())
    assert outcome.result["error"] == 'callback(error): {"code":7,"msg":"é"}'
    outcome = worker.call("callback_error", {"error": [1, "two"]})
    assert (outcome.status, outcome.body) == (500, b'[1,"two"]')


def test_callback_with_another_non_string_error_is_its_text(worker: Worker) -> None:
    outcome = worker.call("callback_error", {"error": 7})
    assert (outcome.status, outcome.headers, outcome.body) == (500, [TEXT], b"7")


def test_callback_with_an_exception_answers_it(worker: Worker) -> None:
    # Passed, not raised: the author chose to send it ("a HTTP 500 response with the
    # provided payload"), so production does not hide it as it hides a raised exception.
    outcome = worker.call("callback_error", {"kind": "exception"})
    assert (outcome.status, outcome.headers, outcome.text) == (
        500, [TEXT], "KeyError: 'missing thing'")
    assert outcome.result["error"] == "callback(error): KeyError: 'missing thing'"
    assert any("Traceback" in line for line in outcome.lines("logging"))


def test_callback_with_an_exception_never_raised(make_worker: Any) -> None:
    for dev in (False, True):  # no traceback to show, in either mode
        outcome = make_worker(dev=dev).call("callback_error", {"kind": "passed"})
        assert (outcome.status, outcome.headers, outcome.text) == (
            500, [TEXT], "ValueError: bad value")
        assert outcome.result["error"] == "callback(error): ValueError: bad value"


def test_callback_with_an_exception_in_dev_mode(make_worker: Any) -> None:
    outcome = make_worker(dev=True).call("callback_error", {"kind": "exception"})
    assert outcome.text.startswith("KeyError: 'missing thing'\n\nTraceback")


def test_async_exception_is_500(worker: Worker) -> None:
    outcome = worker.call("async_raise")
    assert (outcome.status, outcome.text) == (
        500, f"the function failed: RuntimeError (invocation {outcome.result['id']})")
    assert outcome.done["clean"] is True


def test_exception_in_a_thread_before_the_response_is_500(worker: Worker) -> None:
    outcome = worker.call("thread_raises")
    assert (outcome.status, outcome.text) == (
        500, f"the function failed: LookupError (invocation {outcome.result['id']})")
    assert outcome.result["error"] == "thread 'worker-thread' raised LookupError: lost in a thread"


def test_missing_handler_names_the_file_in_the_log_only(worker: Worker) -> None:
    outcome = worker.call("no_handler")
    assert (outcome.status, outcome.headers) == (500, [TEXT])
    assert outcome.text == (
        f"the function defines no handler (invocation {outcome.result['id']})")
    assert outcome.result["error"] == (
        "fixtures/no_handler.py defines no handler; define handler(context, event, callback)"
    )


def test_dev_mode_body_names_the_file(make_worker: Any) -> None:
    outcome = make_worker(dev=True).call("no_handler")
    assert outcome.text == (
        "fixtures/no_handler.py defines no handler; define handler(context, event, callback)"
    )


def test_handler_that_is_not_callable_names_the_file(worker: Worker) -> None:
    outcome = worker.call("handler_not_callable")
    assert outcome.status == 500
    assert outcome.text.startswith("the function's handler is not callable (invocation ")
    assert outcome.result["error"] == (
        "handler in fixtures/handler_not_callable.py is not callable (it is a str)"
    )


def test_handler_with_a_wrong_signature(worker: Worker) -> None:
    outcome = worker.call("bad_signature")
    assert outcome.status == 500
    assert outcome.text.startswith("the function's handler takes the wrong parameters")
    assert "bad_signature.py must take (context, event, callback) or (context, event)" in (
        outcome.result["error"]
    )


def test_star_args_handler_is_callback_style(worker: Worker) -> None:
    assert worker.call("args_handler").body == b"star args is callback style"


def test_bootstrap_runs_once_per_worker(worker: Worker) -> None:
    first = worker.call("bootstrap_counter")
    second = worker.call("bootstrap_counter")
    assert first.body == b'{"bootstraps":1,"calls":1}'
    assert second.body == b'{"bootstraps":1,"calls":2}'


def test_each_worker_runs_its_own_bootstrap(make_worker: Any) -> None:
    for _ in range(2):
        assert make_worker().call("bootstrap_counter").body == b'{"bootstraps":1,"calls":1}'


def test_bootstrap_error_is_500_and_retried_next_time(worker: Worker) -> None:
    failed = worker.call("bootstrap_fails_once")
    assert failed.status == 500
    assert failed.text == (
        f"the function could not be loaded: RuntimeError (invocation {failed.result['id']})")
    assert failed.result["error"] == (
        "error loading fixtures/bootstrap_fails_once.py: RuntimeError: database not ready"
    )
    assert any("Traceback" in line for line in failed.lines("logging"))
    retried = worker.call("bootstrap_fails_once")
    assert (retried.status, retried.body) == (200, b'{"attempt":2}')
    # Now cached: no third bootstrap.
    assert worker.call("bootstrap_fails_once").body == b'{"attempt":2}'


def test_worker_carries_on_after_errors(worker: Worker) -> None:
    assert worker.call("raise_error").status == 500
    assert worker.call("no_handler").status == 500
    assert worker.call("respond_value", {"value": "still here"}).body == b"still here"
