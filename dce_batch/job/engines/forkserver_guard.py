"""Imported only by the local pool's fork server (as its first preload): end it with the driver.

A fork server outlives a driver killed with SIGKILL (it waits for an end-of-file its own resource
tracker keeps from coming), and its workers would go on with it. Linux: ask the kernel to kill
this process when its parent, the driver, dies; the workers do the same with the fork server.
"""

import ctypes
import signal

try:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):  # not Linux/glibc: nothing to ask
    pass
