"""Session-wide fixtures: each real service has its own fixture module under tests/fixtures/."""

pytest_plugins = [
    "tests.fixtures.corpus",
    "tests.fixtures.kafka",
    "tests.fixtures.triton",
    "tests.fixtures.orthanc",
    "tests.fixtures.prometheus",
    "tests.fixtures.s3proxy",
    "tests.fixtures.tls",
    "tests.fixtures.postgres",
    "tests.fixtures.store",
    "tests.fixtures.browser",
]
