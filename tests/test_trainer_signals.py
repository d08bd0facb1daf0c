"""A step's accounting and its log line are written together: an interrupt in between waits for the block to end."""

import signal

import pytest

from rlbench.engine.interrupts import interrupts_deferred


def test_ctrl_c_inside_the_block_is_raised_after_it_completes():
    # Python's own Ctrl-C handler, which it does not install when started with SIGINT ignored (a shell's background job)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        done = []
        with pytest.raises(KeyboardInterrupt):
            with interrupts_deferred():
                signal.raise_signal(signal.SIGINT)  # delivered to this thread, at once (os.kill may pick another)
                done.append("counted")
                done.append("logged")
        assert done == ["counted", "logged"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


def test_sigterm_is_deferred_the_same_way_and_handlers_are_restored():
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with pytest.raises(KeyboardInterrupt):
            with interrupts_deferred():
                signal.raise_signal(signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_an_ignored_signal_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupts_deferred():
            signal.raise_signal(signal.SIGINT)  # delivered to this thread, at once (os.kill may pick another)
    finally:
        signal.signal(signal.SIGINT, previous)


def test_no_signal_means_no_interrupt():
    with interrupts_deferred():
        pass
