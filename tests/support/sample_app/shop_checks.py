"""The sample application's own tests (copied in as test_shop.py by
tests/test_pytest_plugin.py), using the plugin's marker and fixtures."""

import os

import pytest
import shop


@pytest.fixture(autouse=True)
def no_receipts():
    shop.SENT.clear()


@pytest.mark.task_run_method("TASK_PROCESSOR")
def test_an_order_sends_its_receipt_through_the_queue(run_tasks):
    shop.place_order.delay(args=(7,))
    assert shop.SENT == []
    ran = run_tasks()
    assert [(r.identifier, r.args, r.result) for r in ran] == [
        ("shop.place_order", [7], "success"),
        ("shop.send_receipt", [7], "success"),
    ]
    assert shop.SENT == [7]
    assert run_tasks() == [] and len(run_tasks.ran) == 2


@pytest.mark.task_run_method("SYNCHRONOUSLY")
def test_synchronously_runs_at_once():
    shop.place_order.delay(args=(8,))
    assert shop.SENT == [8]


def test_the_method_can_change_within_a_test(task_run_method, run_tasks):
    task_run_method("TASK_PROCESSOR")
    shop.charge_card.delay()
    (attempt,) = run_tasks()
    assert attempt.result == "failure" and "card declined" in attempt.error
    task_run_method("SYNCHRONOUSLY")
    with pytest.raises(RuntimeError, match="card declined"):
        shop.charge_card.delay()


def test_an_unmarked_test_keeps_the_environment():
    assert "TASK_RUN_METHOD" not in os.environ


@pytest.mark.task_run_method("NOPE")
def test_an_unknown_method_is_a_usage_error():
    pass
