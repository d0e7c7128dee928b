"""The service's and the script's ways of POSTing put the same request on the wire."""

import pytest

from clinica_asterisk.delivery.push import KeepAliveTransport, OneShotTransport, PushSender

PAYLOAD = {"didNumber": "0443334000", "externalNumber": "+380670219424", "internalNumber": "801",
           "generalCallID": "1795715093000", "callType": "0", "companyID": "3041",
           "requestType": "receivedTheCall", "note": "Клієнт & co = 100%"}


@pytest.mark.parametrize("push_format", ["form", "json"])
@pytest.mark.parametrize("transport", [KeepAliveTransport, OneShotTransport])
def test_both_transports_deliver_the_same_fields(push_format, transport, crm):
    attempt = PushSender(crm.url, push_format, transport()).post(PAYLOAD, 5)
    assert attempt.ok and attempt.detail == "HTTP 200"
    assert crm.pushes() == [PAYLOAD]


@pytest.mark.parametrize("transport", [KeepAliveTransport, OneShotTransport])
def test_an_error_status_or_a_closed_port_is_a_failed_attempt(transport, failing_crm, closed_port_url):
    assert PushSender(failing_crm.url, "form", transport()).post(PAYLOAD, 5).detail == "HTTP 500"
    refused = PushSender(closed_port_url, "form", transport()).post(PAYLOAD, 5)
    assert not refused.ok and "Connection" in refused.detail


def test_a_crm_that_never_answers_costs_one_time_limit(hanging_crm):
    attempt = PushSender(hanging_crm.url, "form", OneShotTransport()).post(PAYLOAD, 0.3)
    assert not attempt.ok
