"""The store's write lock: threads of one process write in the order they asked, and a
single statement is a transaction of its own."""

import collections
import threading

import pytest

from clinica_asterisk.store.database import FairLock, Store, StoreError


class Queue(collections.deque):
    """The lock's queue of waiters, telling the test when a thread has joined it."""

    def __init__(self):
        super().__init__()
        self.joined = threading.Semaphore(0)

    def append(self, waiter):
        super().append(waiter)
        self.joined.release()


def test_waiting_writers_get_the_lock_in_the_order_they_asked():
    lock = FairLock()
    lock._waiters = queue = Queue()
    order = []
    assert lock.acquire(5)
    threads = []
    for name in "BCDE":
        def take(name=name):
            assert lock.acquire(30)
            order.append(name)
            lock.release()
        thread = threading.Thread(target=take)
        thread.start()
        threads.append(thread)
        assert queue.joined.acquire(timeout=30), "the thread queued"
    lock.release()
    for thread in threads:
        thread.join(30)
    assert order == list("BCDE")


def test_the_lock_is_reentrant_and_times_out_for_others():
    lock = FairLock()
    assert lock.acquire(5) and lock.acquire(5)
    lock.release()
    got = []
    other = threading.Thread(target=lambda: got.append(lock.acquire(0.05)))
    other.start()
    other.join(30)
    assert got == [False]
    lock.release()
    other = threading.Thread(target=lambda: got.append(lock.acquire(5)) or lock.release())
    other.start()
    other.join(30)
    assert got == [False, True]
    assert not lock._waiters


def test_one_statement_writes_and_reports_the_rows_it_changed(tmp_path):
    store = Store(str(tmp_path / "s.sqlite3"))
    call_id = store.insert_call({"direction": "in", "started_at": 1.0})
    assert store.write("UPDATE calls SET did = ? WHERE id = ?", ("0443334000", call_id)) == 1
    assert store.write("UPDATE calls SET did = ? WHERE id = ?", ("x", call_id + 1)) == 0
    assert store.call(call_id)["did"] == "0443334000"
    with pytest.raises(StoreError):
        store.write("UPDATE no_such_table SET x = 1")


def test_new_call_ids_grow_and_are_never_below_the_clock_in_ms(tmp_path):
    clock = [1800000000.0]
    store = Store(str(tmp_path / "s.sqlite3"), clock=lambda: clock[0])
    first = store.insert_call({"direction": "in", "started_at": 1.0})
    second = store.insert_call({"direction": "in", "started_at": 1.0})
    assert first == 1800000000000 and second == first + 1
    clock[0] += 10
    assert store.insert_call({"direction": "in", "started_at": 1.0}) == 1800000010000
    assert store.insert_call({"id": 7, "direction": "out", "started_at": 1.0}) == 7
