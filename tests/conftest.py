import pytest

pytest_plugins = ["tests.s3_server", "tests.ray_cluster"]

# The suite runs on two processes (pytest-xdist: `-n 2 --dist loadgroup` in pyproject.toml), each
# taking the next test when it is free.
#
# The tests of a module whose module-scoped fixture is costly (a training run, a run of the job, a
# Ray head, an ONNX export) run in one process, so that the fixture is built once.
SHARED_MODULE_FIXTURE = ("test_training.py", "test_report.py", "test_onnx.py", "test_job_submit.py")
# The longest start first, so that both processes finish together instead of one of them starting
# a 2.5-minute test when the other is nearly done. The order within each module is kept.
LONGEST_FIRST = ("test_readme.py", "test_training.py", "test_job_submit.py")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own, which reads the groups
def pytest_collection_modifyitems(session, config, items):
    for item in items:
        if item.path.name in SHARED_MODULE_FIXTURE:
            item.add_marker(pytest.mark.xdist_group(item.path.stem))

    def rank(item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable
