pytest_plugins = ["tests.s3_server", "tests.ray_cluster"]

# The suite runs on two processes (pytest-xdist: `-n 2 --maxschedchunk 1` in pyproject.toml), each
# taking the next test when it is free. Without the chunk limit xdist hands each process an eighth
# of the collection up front, in order, and one of them would get every slow test. The slow tests
# start first, the README's (2.5 minutes) first of all, so that both processes finish together on
# the quick ones instead of one of them starting a long test when the other is nearly done. The
# order within each group is the files' order.


def pytest_collection_modifyitems(session, config, items):
    def rank(item) -> int:
        if item.path.name == "test_readme.py" and item.get_closest_marker("slow"):
            return 0
        return 1 if item.get_closest_marker("slow") else 2

    items.sort(key=rank)  # stable
