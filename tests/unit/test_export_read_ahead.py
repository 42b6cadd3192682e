"""The export's read-ahead thread: every chunk once and in order, the reader's error raised to the
writer, and a writer that stops early stops the reader before the cursor would be closed."""

import threading
import time

import pytest

from shared.insight import exports


def test_every_chunk_arrives_once_in_order():
    chunks = iter([[1, 2], [3], [4, 5, 6], []])
    assert list(exports._read_ahead(lambda: next(chunks))) == [[1, 2], [3], [4, 5, 6]]


def test_an_error_while_reading_is_raised_to_the_writer_after_the_chunks_before_it():
    calls = iter([[1], RuntimeError("connection lost")])

    def fetch():
        item = next(calls)
        if isinstance(item, Exception):
            raise item
        return item

    reader = exports._read_ahead(fetch)
    assert next(reader) == [1]
    with pytest.raises(RuntimeError, match="connection lost"):
        next(reader)


def test_a_writer_that_stops_early_stops_the_reader_which_reads_no_further_than_it_may():
    fetched = []

    def fetch():
        fetched.append(len(fetched))
        return [len(fetched)]  # never runs out: a client gone in the middle of a huge export

    before = threading.active_count()
    reader = exports._read_ahead(fetch)
    assert next(reader) == [1]
    time.sleep(0.3)  # the reader fills what it may ahead, then waits
    reader.close()
    assert threading.active_count() == before  # joined: the cursor may be closed now
    # The chunk handed over, READ_AHEAD queued, one more in hand waiting for room: no more.
    assert len(fetched) <= 1 + exports.READ_AHEAD + 1
