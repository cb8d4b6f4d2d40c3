#!/usr/bin/env bash
# Fetch the pinned Apache Kafka broker (org.apache.kafka:kafka_2.13, version in scripts/kafka/pom.xml)
# and its runtime dependencies into .cache/kafka/libs (ONCOSTREAM_KAFKA_LIBS overrides).
exec "$(dirname "$0")/fetch_jars.sh" kafka kafka_2.13
