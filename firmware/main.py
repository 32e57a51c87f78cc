# Runs after boot.py on every normal boot (not after a raw-REPL soft reset).
#
# Small and in source form on purpose: whatever the app throws, the node resets instead of
# sitting at the REPL (the app counts the crash at the next boot; repeated crashes put the node
# in safe mode), and Ctrl-C from a field engineer's console still reaches the REPL.
import gc

try:
    import bootswitch       # an update's switch to a new app, or back (before it is imported)
    bootswitch.run()
except Exception as _e:     # never worse than running the app that is there
    import sys
    sys.print_exception(_e)
gc.collect()
_heap = gc.mem_alloc()      # before the app: what the app uses is measured against this
try:
    from app import run
    run.main(_heap)
except KeyboardInterrupt:
    try:
        from app import state
        _s = state.State()
        _s.flags &= ~state.RUNNING      # stopped by hand: not a crash
        _s.save()
    except Exception:
        pass
    print("stopped (Ctrl-C); the watchdog may still reset the node")
except Exception as _e:
    import sys
    sys.print_exception(_e)
    try:
        with open("crash.txt", "w") as _f:      # for the field engineer: mpremote fs cat
            sys.print_exception(_e, _f)
        from app import state
        _s = state.State()
        _s.flags |= state.RUNNING               # counted as a crash at the next boot
        _s.save()
    except Exception:
        pass
    import machine
    import time
    print("crashed: resetting in 3 s (Ctrl-C for the REPL)")
    time.sleep(3)
    machine.reset()
