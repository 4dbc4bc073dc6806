#!/usr/bin/env bash
# Builds the MiniDFS launcher: compiles src/ with Maven and writes the runtime classpath to
# target/classpath.txt. Idempotent and quick when nothing changed; offline once Maven has fetched
# the dependencies and plugins (MAVEN_OFFLINE=1 forces -o). Safe to run concurrently (flock).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
mkdir -p target
exec 9>target/.build.lock
flock 9

classes=target/classes/bootseer/MiniDfs.class
if [[ -s target/classpath.txt && -f $classes && $classes -nt src/main/java/bootseer/MiniDfs.java
      && target/classpath.txt -nt pom.xml ]]; then
  exit 0
fi

offline=()
if [[ "${MAVEN_OFFLINE:-0}" == 1 ]]; then offline=(-o); fi
mvn -B -q -Dstyle.color=never "${offline[@]}" compile dependency:build-classpath \
  -Dmdep.outputFile=target/classpath.txt.tmp -Dmdep.includeScope=runtime 1>&2
mv target/classpath.txt.tmp target/classpath.txt
