#!/usr/bin/env bash
# Fetch a pinned Java service and its runtime dependencies from Maven's default repository into
# .cache/<name>/libs: fetch_jars.sh NAME MAIN_JAR_PREFIX. The pom is scripts/NAME/pom.xml and names
# the version in <NAME.version>; the main jar must come out as MAIN_JAR_PREFIX-<version>.jar.
# Idempotent: skipped when the cache already holds the jars of the pinned version.
set -euo pipefail
name="$1"
main="$2"
root="$(cd "$(dirname "$0")/.." && pwd)"
pom="$root/scripts/$name/pom.xml"
override="ONCOSTREAM_$(echo "$name" | tr '[:lower:]' '[:upper:]')_LIBS"
libs="${!override:-$root/.cache/$name/libs}"
version="$(sed -n "s:.*<$name.version>\(.*\)</$name.version>.*:\1:p" "$pom")"
stamp="$libs/.complete-$version"
[ -e "$stamp" ] && exit 0
need=()
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing Debian packages for $name: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
echo "fetching $name $version jars into $libs"
tmp="$libs.tmp.$$"
rm -rf "$tmp"
trap 'rm -rf "$tmp"' EXIT
mvn -q -B -Dstyle.color=never -f "$pom" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp"
[ -e "$tmp/$main-$version.jar" ] || { echo "fetch_jars.sh: $main-$version.jar missing after mvn" >&2; exit 1; }
rm -rf "$libs"
mkdir -p "$(dirname "$libs")"
mv "$tmp" "$libs"
touch "$stamp"
echo "$name $version: $(ls "$libs"/*.jar | wc -l) jars in $libs"
