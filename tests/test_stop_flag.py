"""Nested stop flags: a multi-stage command's flag and each stage trainer's flag inside it."""
import os
import signal

from codellama_recipe.train.stop_flag import StopFlag, held_stop_signals


def test_a_signal_between_stages_reaches_the_next_stage_and_one_at_a_stage_end_reaches_the_command():
    before = signal.getsignal(signal.SIGTERM)
    with held_stop_signals() as command:
        os.kill(os.getpid(), signal.SIGUSR1)               # between two stages: the command holds it
        assert command.signum == signal.SIGUSR1
        stage = StopFlag()
        stage.install()
        assert stage.signum == signal.SIGUSR1               # the next stage stops at its first step boundary
        stage.restore()

        command.signum = 0
        stage = StopFlag()
        stage.install()
        assert stage.signum == 0
        os.kill(os.getpid(), signal.SIGTERM)                # while the stage finishes its last step
        assert (stage.signum, command.signum) == (signal.SIGTERM, 0)
        stage.restore()
        assert command.signum == signal.SIGTERM             # the command stops before its next stage
    assert signal.getsignal(signal.SIGTERM) is before
