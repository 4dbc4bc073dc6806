#!/usr/bin/env bash
# Runs the MiniDFS launcher (see src/main/java/bootseer/MiniDfs.java for arguments and the stdin
# protocol), building it first if needed. JAVA_OPTS overrides the JVM options.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$here/build.sh"
# 1 GiB heap is ample for a NameNode and a few DataNodes holding test-sized files.
exec java ${JAVA_OPTS:--Xmx1g -XX:+UseSerialGC} \
  -cp "$here/target/classes:$(cat "$here/target/classpath.txt")" bootseer.MiniDfs "$@"
