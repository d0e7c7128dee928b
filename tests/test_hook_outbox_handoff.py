"""A hook sends the events it queues itself; the delivery worker leaves them alone until
the hook's deadline has passed, so the two do not race for the same event."""

import os
import random
import time

from support.fake_asterisk import FakeCall, SocketPeer

from clinica_asterisk.agi.channel import AgiChannel, LineStream
from clinica_asterisk.deadline import Deadline
from clinica_asterisk.delivery.worker import send_leased_events
from clinica_asterisk.hooks.stages import HookServices, apply_stage
from clinica_asterisk.store.outbox import HOST, lease_owner
from clinica_asterisk.devtools.simulation import ARGS, recorded_calls, with_fresh_ids


def test_the_worker_leaves_a_hooks_fresh_event_to_the_hook_until_its_deadline(settings_for, closed_port_url):
    services = HookServices.open(settings_for(closed_port_url, hook_deadline_ms=2000))
    ring = with_fresh_ids(recorded_calls()["in-801"], random.Random(5))[0].with_args(ARGS["ring-in"])
    peer = SocketPeer(FakeCall(), ring)
    stream = LineStream(peer.script.fileno(), peer.script.fileno())
    channel = AgiChannel(stream, Deadline(5))
    request = stream.read_request()
    stage, args = request.stage_and_args
    result = apply_stage(services, channel, stage, args)
    peer.finish()

    assert result.status == "QUEUED"
    now = services.store.clock()
    outbox = services.outbox
    assert outbox.heads(now) == []  # the worker's view
    assert [e.request_type for e in outbox.heads(now, due_only=False)] == ["receivedTheCall"]
    assert [e.request_type for e in outbox.heads(now + 2.5)] == ["receivedTheCall"]


def _outbox_with(services, events):
    """Events of call 1 as (request_type, lease_owner, lease_until)."""
    outbox = services.outbox
    with services.store.transaction():
        for request_type, owner, until in events:
            event_id = outbox.enqueue(1, request_type, {"requestType": request_type})
            services.store.conn.execute("UPDATE outbox SET lease_owner = ?, lease_until = ? WHERE id = ?",
                                        (owner, until, event_id))
    return outbox


def _lease(services, outbox, owner="me:1"):
    with services.store.transaction():
        return outbox.lease_pending(1, owner, services.store.clock() + 10)


def test_a_hook_leases_all_its_calls_events_in_the_write_that_queued_them(settings_for, closed_port_url):
    services = HookServices.open(settings_for(closed_port_url))
    outbox = _outbox_with(services, [("receivedTheCall", None, None), ("answeredTheCall", None, None)])
    taken, complete = _lease(services, outbox)
    assert [e.request_type for e in taken] == ["receivedTheCall", "answeredTheCall"] and complete
    assert outbox.heads(services.store.clock(), due_only=False) == []  # nobody else may take them now
    assert _lease(services, outbox, owner="other:2") == ([], False)


def test_an_event_held_by_a_live_sender_stops_the_lease_there(settings_for, closed_port_url):
    services = HookServices.open(settings_for(closed_port_url))
    alive = f"{HOST}:{os.getpid()}"
    outbox = _outbox_with(services, [("receivedTheCall", None, None), ("answeredTheCall", alive, 1e12),
                                     ("apiCallCompleted", None, None)])
    taken, complete = _lease(services, outbox)
    assert [e.request_type for e in taken] == ["receivedTheCall"] and not complete
    held = [e.request_type for e in outbox.pending_of_call(1) if e.lease_owner == alive]
    assert held == ["answeredTheCall"]


def test_a_dead_senders_lease_and_an_expired_one_are_taken_over(settings_for, closed_port_url):
    services = HookServices.open(settings_for(closed_port_url))
    dead = f"{HOST}:{2 ** 22 + 12345}"  # above pid_max's default: no such process
    outbox = _outbox_with(services, [("receivedTheCall", dead, 1e12), ("answeredTheCall", "elsewhere:1", 1.0)])
    taken, complete = _lease(services, outbox)
    assert [e.request_type for e in taken] == ["receivedTheCall", "answeredTheCall"] and complete


def test_after_a_failed_push_the_later_leases_are_given_back(failing_crm, settings_for):
    services = HookServices.open(settings_for(failing_crm.url))
    outbox = _outbox_with(services, [("receivedTheCall", None, None), ("answeredTheCall", None, None)])
    owner = lease_owner()
    taken, _ = _lease(services, outbox, owner=owner)
    assert not send_leased_events(outbox, services.sender, taken, time.monotonic() + 2, 60)
    first, second = outbox.pending_of_call(1)
    assert (first.attempts, first.lease_owner, second.attempts, second.lease_owner) == (1, None, 0, None)
    assert failing_crm.arrivals == 1  # the second was not tried behind the failed first
