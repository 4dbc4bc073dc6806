"""A real loader through the mount: safetensors (numpy backend, which maps the file with mmap).

Usage: safetensors_check.py write PATH   -- writes a multi-tensor file, then prints its digest
       safetensors_check.py load PATH    -- loads PATH and prints its digest
The digest is JSON: per tensor name, sha256 of its bytes, shape and dtype. The test compares the
digest of the original file with the digest of the copy loaded through the mount.
"""
import hashlib
import json
import sys

import numpy as np
from safetensors.numpy import load_file, save_file

mode, path = sys.argv[1], sys.argv[2]
if mode == "write":
    rng = np.random.default_rng(7)
    tensors = {
        f"layers.{i}.weight": rng.standard_normal((256, 1024 + i), dtype=np.float32)
        for i in range(6)
    }
    tensors["embed.ids"] = rng.integers(0, 1 << 30, size=(3000, 97), dtype=np.int64)
    tensors["norm.bias"] = rng.standard_normal((1,), dtype=np.float32).astype(np.float16)
    save_file(tensors, path)
elif mode != "load":
    sys.exit(f"unknown mode {mode!r}")

loaded = load_file(path)
print(json.dumps({
    name: [hashlib.sha256(t.tobytes()).hexdigest(), list(t.shape), str(t.dtype)]
    for name, t in sorted(loaded.items())
}, sort_keys=True))
