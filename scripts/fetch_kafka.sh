#!/usr/bin/env bash
# Fetch the pinned Apache Kafka broker (org.apache.kafka:kafka_2.13, version in scripts/kafka/pom.xml)
# and its runtime dependencies into .cache/kafka/libs with Maven's default repository.
# Idempotent: skipped when the cache already holds the jars of the pinned version.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
pom="$root/scripts/kafka/pom.xml"
libs="${ONCOSTREAM_KAFKA_LIBS:-$root/.cache/kafka/libs}"
version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom")"
stamp="$libs/.complete-$version"
[ -e "$stamp" ] && exit 0
need=()
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing Debian packages for the Kafka broker: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
echo "fetching Apache Kafka $version broker jars into $libs"
tmp="$libs.tmp.$$"
rm -rf "$tmp"
trap 'rm -rf "$tmp"' EXIT
mvn -q -B -Dstyle.color=never -f "$pom" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp"
[ -e "$tmp/kafka_2.13-$version.jar" ] || { echo "fetch_kafka.sh: kafka_2.13-$version.jar missing after mvn" >&2; exit 1; }
rm -rf "$libs"
mkdir -p "$(dirname "$libs")"
mv "$tmp" "$libs"
touch "$stamp"
echo "kafka $version: $(ls "$libs"/*.jar | wc -l) jars in $libs"
