"""The one exception type of the KVM layer."""

import errno as _errno
import os


class KvmError(OSError):
    """A KVM ioctl (or opening /dev/kvm) failed.

    `ioctl` names the call, `errno` is the error number; str() reads like
    "KVM_CREATE_VM failed: Cannot allocate memory".
    """

    def __init__(self, ioctl, err, detail=""):
        text = f"{ioctl} failed: {os.strerror(err)}"
        if detail:
            text += f" ({detail})"
        super().__init__(err, text)
        self.ioctl = ioctl

    def __str__(self):
        return self.strerror


def check(ioctl, ret, detail=""):
    """Turns a helper's `-errno` return value into KvmError."""
    if ret < 0:
        raise KvmError(ioctl, -ret, detail)
    return ret


EINTR = _errno.EINTR
EAGAIN = _errno.EAGAIN
