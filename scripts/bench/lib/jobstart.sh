# shellcheck shell=bash disable=SC2154,SC2034 # inputs (repo, work, bins, ckpt_mib, filler_mib) set by the caller, outputs (js_nn, …) read by it
# Shared by scripts/bench/job-start and scripts/bench/cluster-start: the job, its image, its
# requirements and checkpoint; the origin (registry, package index, MiniDFS); one start of the
# job the plain way (skopeo + umoci, pip install, one HDFS stream) and through
# scripts/init/bootseer-init. Sourced with these set: repo, work, bins (the release binaries),
# ckpt_mib, filler_mib. Every function that starts something records how to stop it in
# js_cleanup, which the caller's EXIT trap runs.
#
# Ports are this bench's own (other benches use 5055/5056 and ephemeral MiniDFS ports).
js_reg_port=5071
js_index_port=5072
js_wheels=/tmp/bootseer-job-bench-wheels
js_pids=()

now() { echo "$EPOCHREALTIME"; }
js_log() { echo "== $*" >&2; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }

js_cleanup() { # mounts under $work (deepest first), our daemons, our processes
  local m p
  for m in $(grep -o " $work/[^ ]*" /proc/mounts | sort -r || true); do umount -l "$m" 2>/dev/null || true; done
  for p in "${js_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -n "${js_dfs_in:-}" ]; then exec {js_dfs_in}>&- || true; fi
  for p in "${js_pids[@]}"; do wait "$p" 2>/dev/null || true; done
}

# Before the namespaces: what needs this machine's network (the wheels, MiniDFS's Maven build).
js_fetch() {
  mkdir -p "$js_wheels"
  python3 -m pip download --quiet --disable-pip-version-check --dest "$js_wheels" \
    numpy pandas safetensors pip
  bash "$repo/scripts/minidfs/build.sh"
}

# The job's inputs, built on this host: a rootfs with Debian's Python 3.11 and pip (what a
# python base image holds), FILLER MiB of files the job never reads (CUDA libraries, tools), the
# job and its requirements; a safetensors checkpoint of CKPT MiB of random tensors.
js_build_inputs() {
  local src=$work/src root=$work/src/rootfs lib
  rm -rf "$src"; mkdir -p "$root"/{bin,tmp,proc,dev,sys,etc,job,mnt/ckpt,usr/bin,usr/lib,usr/local/lib/python3.11/dist-packages,opt/filler}
  cp -a /usr/bin/python3.11 "$root/usr/bin/"; ln -s python3.11 "$root/usr/bin/python3"
  ln -s usr/bin/python3 "$root/bin/python3"
  # The stdlib without Debian's extras (dist-packages live elsewhere) or the PEP 668 marker.
  tar -C /usr/lib --exclude=python3.11/test --exclude=EXTERNALLY-MANAGED -cf - python3.11 | tar -C "$root/usr/lib" -xf -
  cp /usr/bin/busybox "$root/bin/busybox"; ln -s busybox "$root/bin/sh"
  # Shared libraries: what the interpreter and its extension modules link, plus the C++ runtime
  # and the glibc stubs that manylinux wheels (numpy, pandas) expect from the system.
  for lib in $( (ldd /usr/bin/python3.11; for f in /usr/lib/python3.11/lib-dynload/*.so; do ldd "$f"; done) 2>/dev/null \
      | awk '/=> \//{print $3} /^[[:space:]]*\/lib64/{print $1}' | sort -u) \
      /lib/x86_64-linux-gnu/{libstdc++.so.6,libgcc_s.so.1,libpthread.so.0,libdl.so.2,librt.so.1,libutil.so.1}; do
    mkdir -p "$root$(dirname "$lib")"; cp -L "$lib" "$root$lib"
  done
  [ -e "$root/lib64" ] || { mkdir -p "$root/lib64"; cp -L /lib64/ld-linux-x86-64.so.2 "$root/lib64/"; }
  [ -e "$root/lib" ] || ln -s usr/lib "$root/lib"
  python3 -m zipfile -e "$js_wheels"/pip-*.whl "$root/usr/local/lib/python3.11/dist-packages/"
  echo 'root:x:0:0:root:/root:/bin/sh' > "$root/etc/passwd"
  local i
  for i in $(seq 0 $(( filler_mib / 64 - 1 ))); do
    head -c $((64 << 20)) /dev/urandom > "$root/opt/filler/lib-$i.so"
  done
  printf '%s\n' numpy pandas safetensors > "$work/requirements.txt"
  cp "$work/requirements.txt" "$root/job/requirements.txt"
  cat > "$root/job/job.py" <<'PY'
# The job's start: import its packages, load the checkpoint fully into memory, print a checksum
# of every tensor (names sorted) and the wall-clock time it finished.
import sys, time, zlib, os
import numpy, pandas, safetensors.numpy
d = sys.argv[1]
crc, n = 0, 0
for name in sorted(os.listdir(d)):
    if name.endswith(".safetensors"):
        tensors = safetensors.numpy.load_file(os.path.join(d, name))
        for k in sorted(tensors):
            crc = zlib.crc32(tensors[k].tobytes(), crc)
            n += tensors[k].nbytes
df = pandas.DataFrame({"x": numpy.arange(8.0)})
print(f"checksum {crc:08x} bytes {n} numpy {numpy.__version__} pandas {pandas.__version__} sum {df.x.sum()}")
print(f"done {time.time():.6f}")
PY
  # The checkpoint, written in the safetensors format by hand (header length, JSON header,
  # data): 64 MiB float32 tensors of random bytes.
  mkdir -p "$src/ckpt"
  python3 - "$src/ckpt/model.safetensors" "$ckpt_mib" <<'PY'
import json, os, struct, sys
path, mib = sys.argv[1], int(sys.argv[2])
size = 64 << 20
sizes = [size] * (mib // 64) + ([(mib % 64) << 20] if mib % 64 else [])
header, off = {}, 0
for i, s in enumerate(sizes):
    header[f"layer.{i:03d}.weight"] = {"dtype": "F32", "shape": [s // 4], "data_offsets": [off, off + s]}
    off += s
h = json.dumps(header).encode()
h += b" " * (-len(h) % 8)
with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h)
    for s in sizes:
        f.write(os.urandom(s))
PY
  # Whole-second times, so the packed layer's times equal what the .pyc files record (see it).
  python3 "$repo/scripts/bench/lib/whole-second-mtimes.py" "$root"
  local oci=$src/oci
  umoci init --layout "$oci" >/dev/null
  umoci new --image "$oci:v1" >/dev/null
  umoci unpack --image "$oci:v1" "$src/bundle" >/dev/null
  cp -a "$root/." "$src/bundle/rootfs/"
  umoci repack --image "$oci:v1" "$src/bundle" >/dev/null
  rm -rf "$src/bundle"
}

# The origin in the current network namespace: Debian docker-registry on :5071 (ADDR, or every
# address when ADDR is not loopback: nodes reach it through a forwarder on their own 127.0.0.1,
# written before BOOTSEER_INSECURE_REGISTRIES let the daemons use plain http to other hosts),
# the wheelhouse over HTTP on ADDR:5072 (pip --find-links reads its directory listing), MiniDFS
# with DATANODES DataNodes (64 MiB blocks; --bind-host ADDR unless ADDR is loopback).
# Sets js_nn (hdfs://…), js_conf (client conf dir), js_xfer_ports.
js_start_origin() { # $1: ADDR, $2: DATANODES
  local addr=$1 dns=$2 reg_addr=$1
  [ "$addr" = 127.0.0.1 ] || reg_addr=0.0.0.0
  cat > "$work/registry.yml" <<YML
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $work/registry}, delete: {enabled: true}}
http: {addr: $reg_addr:$js_reg_port}
YML
  docker-registry serve "$work/registry.yml" > "$work/registry.log" 2>&1 &
  js_pids+=($!)
  mkdir -p "$work/index"; cp "$js_wheels"/*.whl "$work/index/"
  python3 -m http.server --bind "$addr" --directory "$work/index" "$js_index_port" > "$work/index.log" 2>&1 &
  js_pids+=($!)
  local bind=()
  [ "$addr" = 127.0.0.1 ] || bind=(--bind-host "$addr")
  mkfifo "$work/dfs.in"
  JAVA_OPTS="-Xmx2g -XX:+UseSerialGC" bash "$repo/scripts/minidfs/run.sh" --base-dir "$work/dfs" \
    --conf-dir "$work/dfs-conf" --datanodes "$dns" --block-size $((64 << 20)) "${bind[@]}" \
    < "$work/dfs.in" > "$work/dfs.out" 2> "$work/dfs.log" &
  js_pids+=($!)
  exec {js_dfs_in}> "$work/dfs.in" # MiniDFS stops at EOF on its stdin: hold it open
  local i
  for i in $(seq 1200); do grep -q '^READY ' "$work/dfs.out" && break; sleep 0.1; done
  grep -q '^READY ' "$work/dfs.out" || { echo "MiniDFS did not start; see $work/dfs.log" >&2; return 1; }
  js_nn=$(awk '/^READY /{print $2}' "$work/dfs.out")
  js_conf=$(awk '/^READY /{print $3}' "$work/dfs.out")
  js_xfer_ports=$(awk '/^DATANODE /{split($3, a, ":"); print a[2]}' "$work/dfs.out")
  for i in $(seq 100); do curl -sf "http://127.0.0.1:$js_reg_port/v2/" >/dev/null && curl -sf "http://$addr:$js_index_port/" >/dev/null && break; sleep 0.1; done
}

js_hadoop() { # FsShell ARGS…: Hadoop's own client (what `hadoop fs` runs) on the MiniDFS classpath
  java -Xmx512m -cp "$js_conf:$(cat "$repo/scripts/minidfs/target/classpath.txt")" org.apache.hadoop.fs.FsShell "$@"
}

# The image (plain, and converted for bootseer) into the registry at REG, the checkpoint into HDFS.
js_publish() { # $1: REG (host:port the registry is reached at from here)
  skopeo copy --quiet --dest-tls-verify=false "oci:$work/src/oci:v1" "docker://$1/bench/job:v1"
  "$bins/bootseer-image" convert "oci:$work/src/oci:v1" "docker://$1/bench/job:lazy" --json > "$work/convert.json"
  js_hadoop -mkdir -p /ckpt/run
  js_hadoop -put -f "$work/src/ckpt/model.safetensors" /ckpt/run/
}

# The daemons wrapped so that bootseer-init's phases get timestamps: each call of a real binary
# appends "NAME SUBCOMMAND START END" to $JS_TIMES.
js_wrappers() {
  mkdir -p "$work/wrap"
  local b
  for b in bootseer-image bootseer-deps bootseer-ckpt; do
    cat > "$work/wrap/$b" <<SH
#!/usr/bin/env bash
t0=\$EPOCHREALTIME
"$bins/$b" "\$@"; rc=\$?
echo "$b \$1 \$t0 \$EPOCHREALTIME" >> "\$JS_TIMES"
exit \$rc
SH
    chmod +x "$work/wrap/$b"
  done
}

pip_cmd() { # $1: index address; the install as the job's requirements say, from the index only
  echo "env -u PIP_FIND_LINKS -u PIP_INDEX_URL python3 -m pip install --quiet --no-cache-dir --disable-pip-version-check --root-user-action=ignore --no-index --trusted-host $1 --find-links http://$1:$js_index_port/ -r /job/requirements.txt"
}

# One plain start in DIR: pull + unpack, pip install into the rootfs, the checkpoint copied out
# by one HDFS stream (FsShell -get), the job. Appends "baseline PHASE SECONDS" rows and the
# job's output to DIR/out.
js_baseline() { # $1: DIR, $2: REG (host:port), $3: index address, $4: NN URI
  local d=$1 t0 t1 t2 t3 out
  rm -rf "$d"; mkdir -p "$d"
  t0=$(now)
  skopeo copy --quiet --src-tls-verify=false "docker://$2/bench/job:v1" "oci:$d/pull:v1"
  umoci unpack --image "$d/pull:v1" "$d/bundle" >/dev/null
  local r=$d/bundle/rootfs
  t1=$(now)
  mount --rbind /proc "$r/proc"; mount --rbind /dev "$r/dev"
  chroot "$r" /bin/sh -c "$(pip_cmd "$3")"
  t2=$(now)
  js_hadoop -get "$4/ckpt/run/model.safetensors" "$r/mnt/ckpt/" 2>> "$d/hadoop.log"
  t3=$(now)
  out=$(chroot "$r" python3 /job/job.py /mnt/ckpt)
  umount -R -l "$r/proc"; umount -R -l "$r/dev"
  local done_at; done_at=$(awk '/^done /{print $2}' <<< "$out")
  grep '^checksum' <<< "$out" > "$d/checksum"
  python3 - "$t0" "$t1" "$t2" "$t3" "$done_at" > "$d/phases" <<'PY'
import sys
t = [float(x) for x in sys.argv[1:]]
for name, a, b in (("image", 0, 1), ("deps", 1, 2), ("ckpt", 2, 3), ("job", 3, 4)):
    print(f"{name} {t[b] - t[a]:.3f}")
print(f"total {t[4] - t[0]:.3f}")
print(f"start {t[0]:.6f}")
PY
}

# One start through the init recipe in DIR with cache CACHE: image mount (auto trace: replays
# the stored trace, records), deps run (a hit, or install + capture), ckpt mount (prefetching
# JS_CKPT_PREFETCH from the mount on, default *.safetensors; empty: none), the job.
: "${JS_CKPT_PREFETCH=*.safetensors}"
js_bootseer() { # $1: DIR, $2: CACHE, $3: REG, $4: index address, $5: NN URI
  local d=$1 t0 out
  rm -rf "$d"; mkdir -p "$d/sums"
  t0=$(now)
  out=$(JS_TIMES=$d/times HADOOP_CONF_DIR=$js_conf bash "$repo/scripts/init/bootseer-init" \
    --image "docker://$3/bench/job:lazy" --rootfs "$d/rootfs" --cache-dir "$2" --summaries "$d/sums" \
    --workload job --deps-store "docker://$3/bench/deps" --deps-input "$work/requirements.txt" \
    --deps-cmd "$(pip_cmd "$4")" --ckpt "$5/ckpt/run" --ckpt-at /mnt/ckpt ${JS_CKPT_PREFETCH:+--ckpt-prefetch "$JS_CKPT_PREFETCH"} --bin-dir "$work/wrap" \
    -- python3 /job/job.py /mnt/ckpt 2> "$d/init.log")
  local done_at; done_at=$(awk '/^done /{print $2}' <<< "$out")
  grep '^checksum' <<< "$out" > "$d/checksum"
  python3 - "$t0" "$done_at" "$d/times" > "$d/phases" <<'PY'
import sys
t0, done = float(sys.argv[1]), float(sys.argv[2])
calls = {}
for line in open(sys.argv[3]):
    name, sub, a, b = line.split()
    calls.setdefault((name, sub), (float(a), float(b)))
img, deps, ckpt = calls[("bootseer-image", "mount")], calls[("bootseer-deps", "run")], calls[("bootseer-ckpt", "mount")]
print(f"image {img[1] - t0:.3f}")
print(f"deps {deps[1] - img[1]:.3f}")
print(f"ckpt {ckpt[1] - deps[1]:.3f}")
print(f"job {done - ckpt[1]:.3f}")
print(f"total {done - t0:.3f}")
print(f"start {t0:.6f}")
PY
}
