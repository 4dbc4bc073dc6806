"""Truncates the mtime of everything under ROOT to whole seconds (atime likewise).

An image layer made by `umoci repack` (Go's archive/tar, USTAR headers) rounds each mtime to
the nearest second, while the .pyc files pip wrote record the source's mtime truncated. Every
source whose mtime had a fraction >= .5 then looks newer than its .pyc, and Python compiles it
again on each import (with -B it never writes the result), so a start measured on such an image
is mostly bytecode compiling: 9-12 s instead of 2.5 s for the heavy image-startup workload, on
the pulled tree as on every lazy mount. Real images built with whole-second times do not do
this; giving the tree whole seconds before packing makes the packed times equal the ones the
.pyc files hold.

Usage: python3 whole-second-mtimes.py ROOT
"""
import os
import sys

root = sys.argv[1]
for dirpath, dirnames, filenames in os.walk(root, topdown=False):
    for name in filenames + dirnames + [None]:
        path = dirpath if name is None else os.path.join(dirpath, name)
        st = os.lstat(path)
        whole = lambda ns: ns - ns % 1_000_000_000
        os.utime(path, ns=(whole(st.st_atime_ns), whole(st.st_mtime_ns)), follow_symlinks=False)
